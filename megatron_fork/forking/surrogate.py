"""Per-token pieces of the DAPO objective: clipped surrogate and k3 KL. Pure tensor maths."""

from dataclasses import dataclass

import torch

LOG_RATIO_CLAMP = 20.0
"""|log r| is clamped to this before the exp, as verl's compute_policy_loss does ("for
stability"): exp(95) overflows fp32 to inf and its backward gives 0 * inf = NaN. A clamped
token's ratio gets no gradient through the clamp: for A > 0 the upper clip stops it anyway;
for A < 0 without a dual clip the clamp itself stops a gradient that would be huge, as in verl
(which always applies its dual clip)."""


@dataclass(frozen=True)
class Surrogate:
    objective: torch.Tensor
    """[...] o_t, to be maximised."""
    ratio: torch.Tensor
    """[...] r_t = exp(logprob - old_logprob), the log-ratio clamped to +-LOG_RATIO_CLAMP."""
    clipped_low: torch.Tensor
    """[...] bool: A < 0 and r < 1 - eps_low (gradient stopped by the lower clip)."""
    clipped_high: torch.Tensor
    """[...] bool: A > 0 and r > 1 + eps_high (gradient stopped by the upper clip)."""
    clipped_dual: torch.Tensor
    """[...] bool: A < 0 and r > c (gradient stopped by the dual clip)."""


def clipped_surrogate(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip_c: float | None,
) -> Surrogate:
    """o_t = min(r A, clip(r, 1 - eps_low, 1 + eps_high) A); for A < 0, o_t = max(o_t, c A),
    with r = exp(clamp(log_ratio, -20, 20)) and log_ratio = logprob - old_logprob."""
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages
    objective = torch.minimum(unclipped, clipped)
    negative = advantages < 0
    if dual_clip_c is not None:
        objective = torch.where(
            negative, torch.maximum(objective, dual_clip_c * advantages), objective
        )
        clipped_dual = negative & (ratio > dual_clip_c)
    else:
        clipped_dual = torch.zeros_like(negative)
    ratio = ratio.detach()
    return Surrogate(
        objective=objective,
        ratio=ratio,
        clipped_low=negative & (ratio < 1.0 - eps_low),
        clipped_high=(advantages > 0) & (ratio > 1.0 + eps_high),
        clipped_dual=clipped_dual,
    )


K3_LOG_RATIO_CLAMP, K3_VALUE_CLAMP = 20.0, 10.0
"""verl's ``low_var_kl`` bounds: d clamped to +-20 before the exp, the estimate to +-10."""


def k3_kl(ref_log_ratio: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) on samples of pi: exp(d) - d - 1, with
    d = ref_logprob - logprob, clamped as verl's ``low_var_kl`` clamps it (d to +-20, the
    estimate to +-10): over every response token a far-off reference would otherwise give inf
    and a NaN gradient."""
    d = ref_log_ratio.clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return (torch.exp(d) - d - 1.0).clamp(-K3_VALUE_CLAMP, K3_VALUE_CLAMP)
