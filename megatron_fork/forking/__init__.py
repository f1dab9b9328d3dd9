"""The paper's method: which tokens carry the gradient, and the clipped surrogate they carry."""

from megatron_fork.forking.config import NORMALIZERS, SCOPES, STRATEGIES, ForkingLossConfig
from megatron_fork.forking.loss import forking_policy_loss
from megatron_fork.forking.selection import select_forking_tokens

__all__ = [
    "NORMALIZERS",
    "SCOPES",
    "STRATEGIES",
    "ForkingLossConfig",
    "forking_policy_loss",
    "select_forking_tokens",
]
