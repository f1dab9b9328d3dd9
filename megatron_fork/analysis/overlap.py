"""How the high-entropy positions move under RL: for the SAME tokens scored by two
checkpoints, the share of the first one's top-(1 - rho) positions that are also the second
one's (the paper reports > 86% between the base model and RL checkpoints), and the mean change
of entropy per entropy bucket of the first checkpoint."""

import torch

from megatron_fork.analysis.entropy_statistics import quantile_higher


def top_positions(entropy: torch.Tensor, rho: float) -> torch.Tensor:
    """Boolean mask of the tokens at or above the ``rho`` quantile (the trainer's rule)."""
    return entropy >= quantile_higher(entropy, rho)


def top_overlap(before: torch.Tensor, after: torch.Tensor, rho: float = 0.8) -> float:
    """|top(before) & top(after)| / |top(before)| over the same tokens."""
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
