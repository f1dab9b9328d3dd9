"""Patch: tensors that Megatron-Core modules create with ``device="cuda"`` land on the CPU.

What: in the modules listed in ``MODULES`` only, ``torch.zeros/ones/empty/tensor`` calls that
name a CUDA device get the CPU instead; every other ``torch`` attribute is the real one (the
module's ``torch`` global is a thin proxy).
Why: these modules hard-code the device of small bookkeeping tensors: the schedules' token
counter (``total_num_tokens``), the optimizer's loss scale and overflow buffers, the grad-norm
all-reduce buffer in ``clip_grads``, the grad scaler's constants, and the local (no-Apex)
multi-tensor L2 norm in ``utils``. On a CPU-only torch each of those raises before any work.
Verified: megatron-core 0.16.1 with torch 2.13.0 (CPU build).
Can go: when these modules take the device from the model, the parameters or a config.
"""

import importlib

import torch

NAME = "cuda_allocations"

MODULES = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.utils",
)


def _cpu_if_cuda(device):
    if device is None:
        return None
    return torch.device("cpu") if torch.device(device).type == "cuda" else device


def _on_cpu(factory):
    def create(*args, device=None, **kwargs):
        return factory(*args, device=_cpu_if_cuda(device), **kwargs)

    return staticmethod(create)


class _TorchOnCpu:
    """``torch`` as the patched modules see it, with CUDA allocations moved to the CPU."""

    zeros = _on_cpu(torch.zeros)
    ones = _on_cpu(torch.ones)
    empty = _on_cpu(torch.empty)
    tensor = _on_cpu(torch.tensor)

    def __getattr__(self, name):
        return getattr(torch, name)


def apply():
    """Install the patch; return a function that undoes it."""
    modules = [importlib.import_module(name) for name in MODULES]
    originals = [module.torch for module in modules]
    for module in modules:
        module.torch = _TorchOnCpu()

    def undo():
        for module, original in zip(modules, originals, strict=True):
            module.torch = original

    return undo
