"""``pip check`` for the image's trainer environment, measured against the base image's own: the
build fails on any broken requirement that installing the trainer's packages (or the project)
brought, and lists, without failing, those the NGC image already had (a base image can ship a
few; failing on them would stop every build over packages this project never touches).

    python tools/pip_check.py --save FILE     # before installing: the base image's problems
    python tools/pip_check.py --against FILE  # after: exit 1 listing each new problem

A problem line names the package and versions (``x 1.0 has requirement y<2, but you have y
2.1``), so moving a package the base image's packages depend on shows up as a new line."""

import argparse
import subprocess
import sys
from pathlib import Path

CLEAN = "No broken requirements found."


def problems(python: str = sys.executable) -> list[str]:
    """``pip check``'s problem lines for the environment of ``python`` (none when it is clean)."""
    done = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    lines = [line.strip() for line in done.stdout.splitlines()]
    found = [line for line in lines if line and line != CLEAN]
    if done.returncode != 0 and not found:
        raise RuntimeError(f"pip check failed without a problem line: {done.stderr.strip()}")
    return found


def new_problems(before: list[str], after: list[str]) -> list[str]:
    return [line for line in after if line not in set(before)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--save", type=Path, metavar="FILE")
    mode.add_argument("--against", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    found = problems()
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text("".join(f"{line}\n" for line in found))
        print(f"pip check: the base image has {len(found)} broken requirement(s)")
        return
    before = args.against.read_text().splitlines()
    for line in found:
        print(f"pip check: {'(base image) ' if line in before else ''}{line}")
    added = new_problems(before, found)
    if added:
        sys.exit(f"pip check: {len(added)} broken requirement(s) the base image did not have")


if __name__ == "__main__":
    main()
