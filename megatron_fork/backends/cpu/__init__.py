"""Megatron-Core on CPU with gloo process groups: an explicit switch over a few runtime patches.

``enable_cpu_backend()`` checks the megatron-core version, then applies each patch listed in
``PATCHES`` (one file each; the header of each says what it changes, why, for which versions,
and when it can go). It is a no-op where CUDA is available, so the same entry point runs
unchanged on a GPU cluster. Call it before building models; it is idempotent.

Index of patches:
- ``patch_placement``: ``torch.cuda.current_device()`` -> CPU; ``torch.cuda.synchronize()`` no-op.
- ``patch_rng``: Megatron's model-parallel RNG tracker on the CPU generator.
- ``patch_cuda_allocations``: ``device="cuda"`` bookkeeping tensors of the schedules and the
  optimizer (token counter, loss scale, grad-norm buffers) -> CPU.
- ``patch_clip_grads``: gradient clipping by total norm accepts CPU fp32 gradients.
- ``patch_causal_mask``: the default causal attention mask built on the CPU.
- ``patch_embedding_sync``: tied embeddings under PP > 1 synced on the CPU.
- ``patch_distributed_optimizer``: the distributed optimizer (ZeRO-1) accepts CPU parameters;
  its reduce-scatter and all-gather run on gloo as they are.
- ``patch_distributed_optimizer_adam_step``: torch Adam's per-parameter step kept through the
  distributed optimizer's checkpoints (a resume into a fresh optimizer, with the right step).

Models built on this backend need a ``TransformerConfig`` without fused kernels; see
``megatron_fork.backends.cpu.config.CPU_TRANSFORMER_OVERRIDES``.
"""

import importlib

import torch

from megatron_fork.backends.cpu.version import (
    VERIFIED_MEGATRON_CORE_VERSIONS,
    UnverifiedMegatronVersionError,
    check_megatron_core_version,
)

PATCHES: tuple[str, ...] = (
    "patch_placement",
    "patch_rng",
    "patch_cuda_allocations",
    "patch_clip_grads",
    "patch_causal_mask",
    "patch_embedding_sync",
    "patch_distributed_optimizer",
    "patch_distributed_optimizer_adam_step",
)

_undo_stack: list = []

__all__ = [
    "PATCHES",
    "VERIFIED_MEGATRON_CORE_VERSIONS",
    "UnverifiedMegatronVersionError",
    "disable_cpu_backend",
    "enable_cpu_backend",
    "is_cpu_backend_enabled",
]


def is_cpu_backend_enabled() -> bool:
    return bool(_undo_stack)


def enable_cpu_backend(force: bool = False) -> bool:
    """Patch Megatron-Core to run on CPU. Returns True if the patches are active.

    Does nothing (returns False) when CUDA is available, unless ``force``: a GPU machine runs
    Megatron-Core as it is. Raises ``UnverifiedMegatronVersionError`` on an unverified
    megatron-core before touching anything.
    """
    if torch.cuda.is_available() and not force:
        return False
    if _undo_stack:
        return True
    check_megatron_core_version()
    for module_name in PATCHES:
        patch = importlib.import_module(f"{__name__}.{module_name}")
        _undo_stack.append(patch.apply())
    return True


def disable_cpu_backend() -> None:
    """Undo every patch, in reverse order."""
    while _undo_stack:
        _undo_stack.pop()()
