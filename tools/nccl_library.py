"""Prints the path of the ``libnccl.so.2`` that this interpreter's torch loads: the trainer's
NCCL, which the engines preload (``SGLANG_NCCL_LIBRARY``, recipes/engine_task.py) so that both
ends of the weight-update group run one NCCL. The ``Dockerfile`` links it to a fixed path, so no
architecture's library directory (``x86_64-linux-gnu``, ``aarch64-linux-gnu``) is written into
the image; the smoke check (tools/container_smoke.py) compares the link with what torch loaded.

    python tools/nccl_library.py     # exit 1 when no libnccl.so.2 is found

The answer is read from ``/proc/self/maps`` after ``import torch`` (torch links NCCL
dynamically: NGC's build the system's, PyPI's the ``nvidia-nccl`` wheel's); if torch did not map
one, the dynamic loader's cache (``ldconfig -p``) names the system's."""

import ctypes
import subprocess
import sys
from pathlib import Path

SONAME = "libnccl.so.2"


def mapped_library(maps: str, soname: str) -> str | None:
    """The file of ``/proc/<pid>/maps`` whose name is ``soname`` or a versioned file of it
    (``libnccl.so.2.28.9``)."""
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
        name = Path(fields[5]).name if len(fields) == 6 else ""
        if name == soname or name.startswith(soname + "."):
            return fields[5]
    return None


def cached_library(ldconfig_output: str, soname: str) -> str | None:
    """``ldconfig -p``'s first path for ``soname`` (lines ``\\tlibx.so.2 (libc6,x86-64) =>
    /path``)."""
    for line in ldconfig_output.splitlines():
        name, _, path = line.strip().partition(" => ")
        if name.split(" (")[0] == soname and path:
            return path
    return None


def loaded_library(soname: str = SONAME) -> str | None:
    """Where ``soname`` is mapped in this process, else the loader cache's path for it."""
    found = mapped_library(Path("/proc/self/maps").read_text(), soname)
    if found:
        return found
    done = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False)
    return cached_library(done.stdout, soname)


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def symbol_library(symbol: str) -> str | None:
    """The file that defines ``symbol`` in the process's global scope (``dlsym(RTLD_DEFAULT)``,
    then ``dladdr``): where a library's calls to it bind, since the loader searches the global
    scope (the program, then LD_PRELOAD) before a library's own dependencies. None when no
    global library defines it."""
    process = ctypes.CDLL(None)
    try:
        function = getattr(process, symbol)
    except AttributeError:
        return None
    info = _DlInfo()
    if not process.dladdr(ctypes.cast(function, ctypes.c_void_p), ctypes.byref(info)):
        return None
    return info.dli_fname.decode()


def trainer_nccl() -> str | None:
    import torch  # noqa: F401  (maps the NCCL that torch's CUDA library needs)

    return loaded_library(SONAME)


if __name__ == "__main__":
    path = trainer_nccl()
    if path is None:
        sys.exit(f"no {SONAME}: neither torch nor the loader cache has one")
    print(path)
