"""Per-token pieces of the DAPO objective: clipped surrogate and k3 KL. Pure tensor maths."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Surrogate:
    objective: torch.Tensor
    """[...] o_t, to be maximised."""
    ratio: torch.Tensor
    """[...] r_t = exp(logprob - old_logprob)."""
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
    with r = exp(log_ratio) and log_ratio = logprob - old_logprob."""
    ratio = torch.exp(log_ratio)
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


def k3_kl(ref_log_ratio: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) on samples of pi: exp(d) - d - 1, with
    d = ref_logprob - logprob."""
    return torch.exp(ref_log_ratio) - ref_log_ratio - 1.0
