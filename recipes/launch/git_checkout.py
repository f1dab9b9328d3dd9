"""``--packager git``: what NeMo-Run's ``GitArchivePackager`` would ship, checked first.

The packager archives ``HEAD`` of the git checkout around the current directory (``git
rev-parse --show-toplevel``, NeMo-Run 0.11.1 ``core/execution/slurm.py`` ``package``), so
changes not committed are silently left out, and outside a checkout it fails with a
``CalledProcessError`` traceback. Here both are one line (status 2), as the packager's own
``check_uncommitted_changes`` runs (``git diff-index --quiet HEAD --``) only after NeMo-Run has
started the experiment."""

import subprocess
from pathlib import Path


def _git(directory: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise ValueError("--packager git needs git on PATH") from None


def check_git_checkout(directory: Path) -> str:
    """Raise ValueError unless ``directory`` is in a git checkout without uncommitted changes
    to tracked files; return a line naming the commit that will be shipped."""
    top = _git(directory, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise ValueError(
            f"--packager git ships the git checkout around the current directory, and "
            f"{directory} is not in one: run from the project's checkout, or use --packager none"
        )
    root = top.stdout.strip()
    _git(Path(root), "update-index", "-q", "--refresh")
    if _git(Path(root), "diff-index", "--quiet", "HEAD", "--").returncode != 0:
        raise ValueError(
            f"--packager git ships HEAD of {root}, which has uncommitted changes: commit them "
            "(or stash them) first"
        )
    head = _git(Path(root), "rev-parse", "--short", "HEAD").stdout.strip()
    untracked = _git(Path(root), "ls-files", "--others", "--exclude-standard").stdout.split()
    note = f" ({len(untracked)} untracked files are not shipped)" if untracked else ""
    return f"recipes: shipping commit {head} of {root}{note}"
