"""Run a function on N real processes joined by a gloo process group (file rendezvous).

Each test starts its own processes, so no process group or Megatron global state leaks between
tests. Errors in any rank fail the test with that rank's traceback.
"""

import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, world_size, init_file, fn, args):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        fn(rank, world_size, *args)
    finally:
        try:
            from megatron.core import parallel_state

            parallel_state.destroy_model_parallel()
        except Exception:
            pass
        dist.destroy_process_group()


# Workers are forked from a server process that has imported these once, so each test's ranks
# start in well under a second instead of re-importing Megatron-Core (~6 s each on 2 cores).
_PRELOAD = [
    "torch",
    "megatron.core.pipeline_parallel",
    "megatron.core.distributed",
    "megatron_fork",
]
mp.set_forkserver_preload(_PRELOAD)


def run_distributed(fn, world_size: int, *args, timeout: float = 300.0):
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` fresh gloo ranks."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        context = mp.start_processes(
            _entry,
            args=(world_size, init_file, fn, args),
            nprocs=world_size,
            join=False,
            start_method="forkserver",
        )
        deadline = time.monotonic() + timeout
        while not context.join(timeout=5.0):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                raise TimeoutError(f"distributed test did not finish in {timeout} s")
