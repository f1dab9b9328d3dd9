"""Patch: CUDA placement calls answer with the CPU.

What: ``torch.cuda.current_device()`` returns ``torch.device("cpu")`` and
``torch.cuda.synchronize()`` does nothing.
Why: Megatron-Core places buffers with ``device=torch.cuda.current_device()`` (RoPE ``inv_freq``,
pipeline p2p shape buffers, DDP grad buffers) and p2p communication calls
``torch.cuda.synchronize()``; on a CPU-only torch both raise.
Verified: megatron-core 0.16.1 with torch 2.13.0 (CPU build).
Can go: when Megatron-Core takes its device from a config or process group instead of CUDA.
"""

import torch

NAME = "placement"


def apply():
    """Install the patch; return a function that undoes it."""
    original_current_device = torch.cuda.current_device
    original_synchronize = torch.cuda.synchronize

    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda device=None: None

    def undo():
        torch.cuda.current_device = original_current_device
        torch.cuda.synchronize = original_synchronize

    return undo
