"""Statistics of per-token entropies (nats) of generated responses, as the paper reports them:
percentiles, the share of near-deterministic tokens (< 0.01 nats), the rho-quantile threshold
at or above which the forking tokens (the top 1 - rho) lie, and entropy by position.

Quantiles use the "higher" rule on the sorted values (an observed entropy, no interpolation),
matching the trainer's selection: the top-20% tokens are those >= the 80th-percentile value.
"""

from dataclasses import asdict, dataclass

import torch

PAPER_BELOW_001 = 0.5064
"""Share of tokens with entropy below 0.01 nats the paper reports for Qwen3-8B CoT."""
PAPER_P80 = 0.672
"""The 80th percentile of token entropy the paper reports."""
NEAR_ZERO = 0.01


def quantile_higher(values: torch.Tensor, q: float) -> float:
    """The smallest observed value with at least a ``q`` share of values at or below it."""
    if values.numel() == 0:
        raise ValueError("no tokens: quantiles of an empty set")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is not in [0, 1]")
    ordered = values.flatten().double().sort().values
    index = max(0, int(torch.tensor(q * ordered.numel()).ceil().item()) - 1)
    return float(ordered[index])


@dataclass(frozen=True)
class EntropySummary:
    tokens: int
    mean: float
    percentiles: dict
    """{"p50": ..., "p80": ..., ...} (higher rule)."""
    share_below_001: float
    rho_threshold: float
    """The entropy at the ``rho`` quantile: tokens at or above it are the forking tokens."""
    rho: float

    def as_dict(self) -> dict:
        return asdict(self)


def summarize_entropy(
    entropy: torch.Tensor, rho: float = 0.8, percentiles=(10, 25, 50, 75, 80, 90, 95, 99)
) -> EntropySummary:
    """Over every token of ``entropy`` (any shape, padding already removed)."""
    values = entropy.flatten().double()
    return EntropySummary(
        tokens=values.numel(),
        mean=float(values.mean()) if values.numel() else float("nan"),
        percentiles={f"p{p}": quantile_higher(values, p / 100) for p in percentiles},
        share_below_001=float((values < NEAR_ZERO).double().mean()),
        rho_threshold=quantile_higher(values, rho),
        rho=rho,
    )


def entropy_by_position(
    entropy: torch.Tensor, positions: torch.Tensor, bucket: int = 32
) -> list[tuple[int, float, int]]:
    """(first position of the bucket, mean entropy, token count) per ``bucket`` positions of
    the response, for buckets that have tokens."""
    if entropy.shape != positions.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} vs positions {tuple(positions.shape)}")
    keys = (positions.flatten() // bucket).long()
    values = entropy.flatten().double()
    rows = []
    for key in torch.unique(keys).tolist():
        chosen = values[keys == key]
        rows.append((key * bucket, float(chosen.mean()), chosen.numel()))
    return rows
