"""The forking tokens as the trainer selects them, and how they move under RL.

``rho`` here means what the trainer's ``loss.rho`` means: the share of tokens KEPT (0.2 = the
top 20% by entropy). The top set is exactly k = ceil(rho * N) tokens (``num_to_select``, the
trainer's count), the largest entropies with ties broken by position (the earlier token first,
the trainer's default order), never "every token at or above a quantile" (one token more when
0.8 * N is an integer, more with ties).

For the SAME tokens scored by two checkpoints: the share of the first one's top positions that
are also the second one's (the paper reports > 86% between the base model and RL checkpoints),
and the mean change of entropy per entropy bucket of the first checkpoint."""

import torch

from megatron_fork.forking.config import check_rho
from megatron_fork.forking.selection import num_to_select

MAX_TOP_SHARE = 0.5
"""The largest rho the analysis tools accept: above it the "high-entropy" group is the majority
(most likely the old quantile meaning, 0.8, given where 0.2 was meant)."""


def check_top_share(rho: float) -> None:
    """Refuse a rho that is not a share of tokens kept in (0, ``MAX_TOP_SHARE``]."""
    check_rho(rho)
    if rho > MAX_TOP_SHARE:
        raise ValueError(
            f"rho={rho:g}: rho is the share of tokens kept as forking tokens, as the trainer's "
            f"loss.rho (0.2 = the top 20% by entropy), at most {MAX_TOP_SHARE:g} here: did you "
            f"mean {1 - rho:g}? (rho was once the quantile, 0.8 for the top 20%)"
        )


def top_positions(entropy: torch.Tensor, rho: float = 0.2) -> torch.Tensor:
    """Bool mask, shaped like ``entropy`` [...], of exactly ``ceil(rho * N)`` tokens: the
    largest entropies (compared in float32, as the trainer ranks them), ties by flat position."""
    check_rho(rho)
    flat = entropy.flatten()  # [N]
    if flat.numel() == 0:
        raise ValueError("no tokens: the top set of an empty set")
    if not torch.isfinite(flat).all():
        raise ValueError(f"{int((~torch.isfinite(flat)).sum())} entropies are not finite")
    k = int(num_to_select(rho, torch.tensor(flat.numel())))
    # A stable sort keeps equal entropies in position order: the earlier token ranks first.
    ranked = torch.sort(flat.float(), descending=True, stable=True).indices  # [N]
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[ranked[:k]] = True
    return mask.view(entropy.shape)


def top_threshold(entropy: torch.Tensor, rho: float = 0.2) -> float:
    """The smallest entropy in the top set: every top token is at or above it (a token below
    the top set equals it only in a tie, left out by position)."""
    values = entropy.flatten().double()
    return float(values[top_positions(values, rho)].min())


def top_overlap(before: torch.Tensor, after: torch.Tensor, rho: float = 0.2) -> float:
    """|top(before) & top(after)| / |top(before)| over the same tokens (both sets hold k)."""
    if before.shape != after.shape:
        raise ValueError(
            f"entropies of {tuple(before.shape)} and {tuple(after.shape)} tokens: the overlap "
            "needs the same responses scored by both checkpoints"
        )
    first, second = top_positions(before.flatten(), rho), top_positions(after.flatten(), rho)
    return float((first & second).sum()) / float(first.sum())


def change_by_bucket(
    before: torch.Tensor, after: torch.Tensor, edges=(0.01, 0.1, 0.5, 1.0, 2.0)
) -> list[tuple[str, float, int]]:
    """(bucket of the first checkpoint's entropy, mean after - before, tokens) per bucket."""
    before, after = before.flatten().double(), after.flatten().double()
    bounds = [0.0, *edges, float("inf")]
    rows = []
    for low, high in zip(bounds[:-1], bounds[1:], strict=True):
        chosen = (before >= low) & (before < high)
        if chosen.any():
            delta = float((after[chosen] - before[chosen]).mean())
            rows.append((f"[{low:g}, {high:g})", delta, int(chosen.sum())))
    return rows
