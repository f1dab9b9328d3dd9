"""Writes requirements/sglang.txt: every package of the image's sglang environment at an exact
version, resolved from PyPI for the image (CPython 3.12, glibc 2.39 manylinux, x86_64) with
binary wheels only, so the ``Dockerfile``'s ``/opt/sglang`` is the same each build and nothing in
it is compiled with the image's toolchain.

    python3.12 tools/sglang_constraints.py    # sglang: the Dockerfile's SGLANG_VERSION

It asks pip for a resolution only (``install --dry-run --report``: package metadata, no wheel is
downloaded or installed), with no pip configuration or constraint of this machine. The file is a
constraints file (``pip install -c``): versions, not wheel hashes, so an arm64 build (GH200)
uses the same versions and fails loudly where one has no wheel there."""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "requirements" / "sglang.txt"
GLIBC = (2, 39)
"""Ubuntu 24.04, the NGC PyTorch 25.x/26.x base."""


def platforms(arch: str = "x86_64") -> list[str]:
    """Every manylinux tag a glibc-2.39 system accepts (pip does not expand ``--platform``)."""
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC[1], 16, -1)]
    return tags + [f"manylinux{legacy}_{arch}" for legacy in ("2014", "2010", "1")]


def resolve(sglang: str) -> list[dict]:
    """pip's installation report for ``sglang==<sglang>`` on the image's Python and platform."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
        command += ["--quiet", "--report", str(report), "--only-binary=:all:"]
        command += ["--python-version", "3.12", "--implementation", "cp"]
        command += ["--abi", "cp312", "--abi", "abi3", "--abi", "none"]
        command += [arg for tag in platforms() for arg in ("--platform", tag)]
        command += ["--target", str(Path(scratch) / "target"), f"sglang=={sglang}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull  # this machine's indexes and constraints stay out
        if "PIP_CERT" in os.environ:
            env["PIP_CERT"] = os.environ["PIP_CERT"]
        subprocess.run(command, check=True, env=env)
        return json.loads(report.read_text())["install"]


def constraints(items: list[dict], sglang: str) -> str:
    pins = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items]
    header = [
        f"# The image's sglang environment (/opt/sglang): sglang {sglang} and every package it",
        "# pulls, resolved for CPython 3.12, manylinux glibc 2.39, x86_64, binary wheels only.",
        "# Written by tools/sglang_constraints.py (run it again to move a version); used by the",
        "# Dockerfile with `pip install --only-binary=:all: -c` (versions, no hashes: arm64 too).",
    ]
    return "\n".join(header + sorted(pins, key=str.lower)) + "\n"


def dockerfile_sglang() -> str:
    """The Dockerfile's ``SGLANG_VERSION`` (tests/test_container.py holds it to the protocol's;
    read here so that this runs on a bare Python 3.12, without torch or the project)."""
    text = (ROOT / "Dockerfile").read_text()
    return re.search(r"^ARG SGLANG_VERSION=(\S+)$", text, re.MULTILINE).group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sglang", default=dockerfile_sglang())
    args = parser.parse_args()
    if sys.version_info[:2] != (3, 12) or platform.machine() != "x86_64":
        raise SystemExit("run with CPython 3.12 on x86_64 (pip reads markers from the host)")
    OUTPUT.write_text(constraints(resolve(args.sglang), args.sglang))
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
