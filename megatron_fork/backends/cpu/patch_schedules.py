"""Patch: the pipeline schedules allocate their token counter on the CPU.

What: inside ``megatron.core.pipeline_parallel.schedules`` only, ``torch.zeros``/``torch.empty``
calls that name ``device="cuda"`` get the CPU instead. Every other ``torch`` attribute is the
real one.
Why: ``forward_backward_no_pipelining`` and both pipelined schedules build
``total_num_tokens = torch.zeros([], ..., device="cuda")``; on a CPU-only torch that raises
before the first micro-batch.
Verified: megatron-core 0.16.1 with torch 2.13.0 (CPU build).
Can go: when the schedules take the device from the model or config.
"""

import torch
from megatron.core.pipeline_parallel import schedules

NAME = "schedules"


def _cpu_if_cuda(device):
    if device is None:
        return None
    return torch.device("cpu") if torch.device(device).type == "cuda" else device


class _TorchOnCpu:
    """``torch`` as the schedules module sees it, with CUDA allocations moved to the CPU."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, device=None, **kwargs):
        return torch.zeros(*args, device=_cpu_if_cuda(device), **kwargs)

    @staticmethod
    def empty(*args, device=None, **kwargs):
        return torch.empty(*args, device=_cpu_if_cuda(device), **kwargs)


def apply():
    """Install the patch; return a function that undoes it."""
    original_torch = schedules.torch
    schedules.torch = _TorchOnCpu()

    def undo():
        schedules.torch = original_torch

    return undo
