"""Patch: gradient clipping by total norm accepts CPU fp32 gradients.

What: ``megatron.core.optimizer.optimizer.clip_grad_by_total_norm_fp32`` (the name the
optimizer calls) is replaced by a function with the same signature and maths: grads of fp32
parameters are scaled by max_norm / (total_norm + 1e-6) when that is below 1.
Why: the original asserts ``param.grad.type() == 'torch.cuda.FloatTensor'``, so any optimizer
step with ``clip_grad > 0`` fails on CPU even though the norm itself is computed fine.
Verified: megatron-core 0.16.1 with torch 2.13.0 (CPU build).
Can go: when the assertion checks the dtype rather than the CUDA tensor type.
"""

import torch
from megatron.core.optimizer import optimizer as mcore_optimizer
from megatron.core.utils import to_local_if_dtensor

NAME = "clip_grads"


def clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """Scale the fp32 gradients of ``parameters`` in place so their total norm is ``max_norm``."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attribute = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = []
    for param in parameters:
        grad = getattr(param, attribute, None)
        if grad is None:
            continue
        if grad.dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"gradient clipping expects fp32/bf16 grads, got {grad.dtype}")
        grads.append(to_local_if_dtensor(grad).detach())
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


def apply():
    """Install the patch; return a function that undoes it."""
    original = mcore_optimizer.clip_grad_by_total_norm_fp32
    mcore_optimizer.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm_fp32

    def undo():
        mcore_optimizer.clip_grad_by_total_norm_fp32 = original

    return undo
