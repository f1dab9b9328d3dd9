"""Patch: Megatron's distributed optimizer accepts CPU parameters.

What: while ``DistributedOptimizer.__init__`` runs, ``Tensor.type()`` called without arguments
on a CPU tensor answers with the CUDA type name (``torch.FloatTensor`` ->
``torch.cuda.FloatTensor``); any other call of ``Tensor.type``, and every call outside the
constructor, is the real one.
Why: the constructor sorts parameters into fp32 and fp16/bf16 groups by comparing
``param.type()`` with ``'torch.cuda.FloatTensor'`` / ``'torch.cuda.BFloat16Tensor'``
(``optimizer/distrib_optimizer.py`` lines 361, 420 and 582 in 0.16.1) and raises
``TypeError: Wrapped parameters must be one of torch.cuda.FloatTensor, ...`` for CPU tensors.
That check is all that stops the distributed optimizer on CPU: its collectives
(``reduce_scatter_tensor`` of the grad buckets, ``all_gather_into_tensor`` of the updated
parameter shards, both inside ``_coalescing_manager``) run on gloo with torch 2.13, and its
buffers are placed with ``torch.cuda.current_device()`` (``patch_placement``).
Verified: megatron-core 0.16.1 with torch 2.13.0 (CPU build).
Can go: when the optimizer classifies parameters by dtype instead of CUDA type names.
"""

import contextlib

import torch
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

NAME = "distributed_optimizer"


@contextlib.contextmanager
def _cpu_tensors_report_cuda_types():
    real_type = torch.Tensor.type

    def type_(self, *args, **kwargs):
        if args or kwargs or self.device.type != "cpu":
            return real_type(self, *args, **kwargs)
        return real_type(self).replace("torch.", "torch.cuda.", 1)  # the name, nothing else

    torch.Tensor.type = type_
    try:
        yield
    finally:
        torch.Tensor.type = real_type


def apply():
    """Install the patch; return a function that undoes it."""
    original = DistributedOptimizer.__init__

    def __init__(self, *args, **kwargs):
        with _cpu_tensors_report_cuda_types():
            original(self, *args, **kwargs)

    DistributedOptimizer.__init__ = __init__

    def undo():
        DistributedOptimizer.__init__ = original

    return undo
