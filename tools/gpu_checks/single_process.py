"""Helpers of the one-GPU checks: a one-process Megatron (as the trainer makes one), and a
measurement of the time and peak memory of a piece of work on a device."""

import os
import time
from dataclasses import dataclass

import torch

from tools.gpu_checks.core import CheckFailed


def one_process_megatron() -> None:
    """A one-process group and Megatron's parallel state (TP = PP = CP = 1) as the trainer's
    ``init_parallel`` makes them: NCCL on this GPU, or gloo + the CPU backend without CUDA."""
    import torch.distributed as dist

    from megatron_fork.trainer.actor import init_parallel
    from megatron_fork.trainer.trainer_config import ParallelConfig

    os.environ.pop("RANK", None)  # our own group, never a launcher's
    if not dist.is_initialized():
        init_parallel(ParallelConfig(), seed=0)


def cuda_device() -> torch.device:
    if not torch.cuda.is_available():
        raise CheckFailed("no CUDA device")
    return torch.device("cuda", torch.cuda.current_device())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Measured:
    seconds: float
    """Best of the timed repeats."""
    peak_bytes: int | None
    """CUDA only: peak allocated during the repeats above what was allocated before them."""
    output: object
    """What the last repeat returned."""


def measure(device: torch.device, work, repeats: int = 1, warmup: bool = True) -> Measured:
    """Run ``work()`` (after one unmeasured run when ``warmup``) ``repeats`` times."""
    if warmup:
        work()
    synchronize(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times, output = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        output = work()
        synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) - base if cuda else None
    return Measured(min(times), peak, output)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def size(nbytes: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB"):
        if abs(nbytes) < 1024:
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    return f"{nbytes:.3g} GiB"
