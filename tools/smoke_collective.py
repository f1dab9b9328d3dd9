"""One real broadcast between the trainer's torch and the engines' torch, through the weight-update
group's code (megatron_fork/rollout/weight_group.py: ``master_store``, ``join_weight_group``,
which build the group the way sglang's ``init_custom_process_group`` does). Rank 0 is this
interpreter (the trainer's); rank 1 is ``python`` (the image's sglang environment), started with
the engines' environment (``engine_environment``: the trainer's NCCL preloaded). Rank 1 checks
every value it receives against its own computation of the payload, and that the preloaded
library is the NCCL its torch calls, and exits non-zero otherwise. Both leave the group by
aborting it once rank 0's broadcast has returned (a store key says so): nothing waits on a peer
that has gone.

On GPUs the backend is NCCL, rank r on GPU r: it needs two GPUs, since NCCL refuses two ranks of
one communicator on one device. On CPU the same path runs with gloo
(tests/test_container_smoke.py).

    python tools/smoke_collective.py --rank1 PORT BACKEND TIMEOUT_S   # rank 1's side (internal)
"""

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):  # rank 1 runs as a script in sglang's interpreter
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GROUP_NAME = "container_smoke"
SENT = "container_smoke_sent"
"""Store key rank 0 sets when its broadcast has returned."""
PAYLOAD = 4096
"""float32 elements: more than one NCCL/gloo chunk boundary is not needed, a full page is."""


def payload(device: str):
    """What rank 0 sends, computed by each side on its own: distinct, non-zero values, so a
    zero buffer, a shifted copy or a partial copy cannot pass."""
    import torch

    return torch.arange(PAYLOAD, dtype=torch.float32, device=device) * 0.5 + 1.0  # (PAYLOAD,)


def _device(backend: str, rank: int) -> str:
    if backend != "nccl":
        return "cpu"
    import torch

    torch.cuda.set_device(rank)
    return f"cuda:{rank}"


def preload_problem(maps: str, preload: str, cuda_torch: bool) -> str | None:
    """Rank 1 runs on the preloaded library: it is mapped, and (a CUDA torch) NCCL's symbols
    resolve to it in the global scope, where libtorch_cuda's NCCL calls bind (LD_PRELOAD comes
    first). torch's wheel copy may be mapped beside it: torch's ``__init__`` opens
    ``nvidia/nccl/lib/libnccl.so.2`` by path, and nothing binds to that copy."""
    from tools.nccl_library import symbol_library

    wanted = os.path.realpath(preload)
    mapped = {os.path.realpath(f[5]) for f in (line.split(maxsplit=5) for line in maps.splitlines())
              if len(f) == 6 and f[5].startswith("/")}  # fmt: skip
    if wanted not in mapped:
        return f"LD_PRELOAD {preload} is not mapped"
    provider = symbol_library("ncclGetVersion") if cuda_torch else preload
    if provider is None or os.path.realpath(provider) != wanted:
        return f"NCCL's symbols resolve to {provider}, not to the preloaded {preload}"
    return None


def _rank1(port: int, backend: str, timeout_s: float) -> None:
    import torch
    from torch.distributed import TCPStore

    from megatron_fork.rollout.weight_group import join_weight_group

    timeout = timedelta(seconds=timeout_s)
    device = _device(backend, 1)
    store = TCPStore("127.0.0.1", port, 2, False, timeout=timeout)
    group = join_weight_group(store, 1, 2, GROUP_NAME, backend, timeout)
    received = torch.zeros(PAYLOAD, dtype=torch.float32, device=device)
    group.broadcast([received])
    wrong = int((received != payload(device)).sum())
    store.wait([SENT])
    group.abort()
    if wrong:
        sys.exit(f"rank 1: {wrong} of {PAYLOAD} values differ from the payload")
    preload = os.environ.get("LD_PRELOAD", "").split(":")[0]
    maps = Path("/proc/self/maps").read_text()
    problem = preload and preload_problem(maps, preload, torch.version.cuda is not None)
    if problem:
        sys.exit(f"rank 1: {problem}")
    nccl = f" {torch.cuda.nccl.version()}" if backend == "nccl" else ""
    print(f"rank 1: torch {torch.__version__}, {backend}{nccl}, preloaded {preload or '-'}: "
          "payload received intact")  # fmt: skip


def collective_problem(
    backend: str, python: str, timeout_s: float = 120.0, send=None, environ=None
) -> str | None:
    """None when rank 1 (``python``) received rank 0's broadcast intact, else what went wrong.
    ``send`` replaces the payload (a test's wrong value); ``environ``: rank 1's environment
    before ``engine_environment`` (default: this process's)."""
    from megatron_fork.rollout.weight_group import join_weight_group, master_store
    from recipes.engine_task import engine_environment

    timeout = timedelta(seconds=timeout_s)
    device = _device(backend, 0)
    store = master_store("127.0.0.1", 2, timeout=timeout)
    command = [python, __file__, "--rank1", str(store.port), backend, str(timeout_s)]
    env = engine_environment(os.environ if environ is None else environ)
    try:
        rank1 = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as error:
        return f"collective ({backend}): rank 1 did not start: {error}"
    group = None
    try:
        group = join_weight_group(store, 0, 2, GROUP_NAME, backend, timeout)
        group.broadcast([payload(device) if send is None else send.to(device)])
        store.set(SENT, "1")
        out, err = rank1.communicate(timeout=timeout_s)
    except Exception as error:  # every failure is the smoke's finding
        rank1.kill()
        out, err = rank1.communicate()
        return f"collective ({backend}): rank 0: {error}; rank 1: {_tail(err)}"
    finally:
        if group is not None:
            group.abort()
    if rank1.returncode != 0:
        return f"collective ({backend}): rank 1 exited {rank1.returncode}: {_tail(err)}"
    print(out.decode().strip())
    return None


def _tail(stream: bytes, lines: int = 5) -> str:
    return " | ".join(stream.decode(errors="replace").strip().splitlines()[-lines:])


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "--rank1":
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    _rank1(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
