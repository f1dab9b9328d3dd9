"""Patch: the default causal attention mask is built on the CPU.

What: ``get_default_causal_mask(sq)`` (as imported by ``megatron.core.fusions.fused_softmax``
and as defined in ``megatron.core.transformer.utils``) builds its mask on the CPU, cached per
length like the original.
Why: the local attention path (``attention_mask=None``, causal) builds the mask with
``device="cuda"``, which raises on a CPU-only torch.
Verified: megatron-core 0.16.1 with torch 2.13.0 (CPU build).
Can go: when the mask follows the device of the attention scores.
"""

import functools

import torch
from megatron.core.fusions import fused_softmax
from megatron.core.transformer import utils as transformer_utils

NAME = "causal_mask"


@functools.lru_cache(maxsize=32)
def cpu_default_causal_mask(sq: int) -> torch.Tensor:
    """[sq, sq] bool, True above the diagonal (positions a query must not see)."""
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def apply():
    """Install the patch; return a function that undoes it."""
    originals = (fused_softmax.get_default_causal_mask, transformer_utils.get_default_causal_mask)
    fused_softmax.get_default_causal_mask = cpu_default_causal_mask
    transformer_utils.get_default_causal_mask = cpu_default_causal_mask

    def undo():
        fused_softmax.get_default_causal_mask, transformer_utils.get_default_causal_mask = originals

    return undo
