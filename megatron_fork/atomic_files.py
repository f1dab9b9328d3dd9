"""Files and directories written whole or not at all: into a temporary sibling, then renamed
into place, so a crash never leaves half of one under the final name."""

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def write_text_atomically(path: str | Path, text: str, durable: bool = False) -> None:
    """``durable``: on disk before this returns (file and directory synced), for a record
    that must outlive the machine, not only the process, before what it announces happens."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as file:
        file.write(text)
        if durable:
            file.flush()
            os.fsync(file.fileno())
    os.replace(tmp, path)
    if durable:
        _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """The rename on disk too; a filesystem that cannot sync a directory (EINVAL: some network
    filesystems) is trusted with it."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
    finally:
        os.close(handle)


@contextmanager
def directory_written_atomically(
    final: str | Path, leader: bool = True, barrier: Callable[[], None] = lambda: None
) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``final``; when the block ends it replaces ``final``.

    With several processes writing into it, each passes ``barrier`` (the collective all of
    them join) and only the ``leader`` creates, renames and cleans up. A process killed inside
    the block leaves ``final`` as it was (absent or the previous version), never half-written;
    an exception on the leader removes the temporary directory.
    """
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    if leader:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a process killed earlier
        tmp.mkdir(parents=True)
    barrier()
    try:
        yield tmp
    except BaseException:
        if leader:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    if leader:
        _replace_with(final, tmp)
    barrier()


def _replace_with(final: Path, new: Path) -> None:
    """Put ``new`` at ``final``; an old ``final`` is moved aside first and removed only after,
    so a crash in between leaves one of them under a name (never neither)."""
    old = final.with_name(final.name + ".old")
    _remove(old)
    if final.exists() or final.is_symlink():
        os.replace(final, old)
    os.replace(new, final)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
