"""Statistics of per-token entropies (nats) of generated responses, as the paper reports them:
percentiles, the share of near-deterministic tokens (< 0.01 nats), the forking tokens (the top
``rho`` share, exactly the trainer's count: ``overlap.top_positions``) and the smallest entropy
among them, and entropy by position.

Percentiles use the "higher" rule on the sorted values (an observed entropy, no interpolation):
the q-quantile is the ceil(q * N)-th smallest, with ceil(q * N) exact (q read as the decimal it
is written as, like ``num_to_select``). The top-rho threshold is NOT the (1 - rho)-quantile: it
is the smallest entropy of the ceil(rho * N) top tokens, the (floor((1 - rho) * N) + 1)-th
smallest: one place above the (1 - rho)-quantile in sorted order when (1 - rho) * N is an
integer, the same place otherwise.
"""

import math
from dataclasses import asdict, dataclass
from fractions import Fraction

import torch

from megatron_fork.analysis.overlap import top_positions

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
    return float(ordered[quantile_index(q, ordered.numel())])


def quantile_index(q: float, n: int) -> int:
    """0-based index of the "higher" q-quantile among ``n`` sorted values: ceil(q * n) - 1 in
    exact arithmetic (float error in q * n would move it by one for large n)."""
    return max(0, math.ceil(Fraction(repr(float(q))) * n) - 1)


@dataclass(frozen=True)
class EntropySummary:
    tokens: int
    mean: float
    percentiles: dict
    """{"p50": ..., "p80": ..., ...} (higher rule)."""
    share_below_001: float
    rho: float
    """The share of tokens kept as forking tokens (the trainer's ``loss.rho``: 0.2 = top 20%)."""
    top_tokens: int
    """How many forking tokens: exactly ceil(rho * tokens), the trainer's count."""
    top_threshold: float
    """The smallest entropy among the forking tokens."""

    def as_dict(self) -> dict:
        return asdict(self)


def summarize_entropy(
    entropy: torch.Tensor, rho: float = 0.2, percentiles=(10, 25, 50, 75, 80, 90, 95, 99)
) -> EntropySummary:
    """Over every token of ``entropy`` (any shape, padding already removed)."""
    values = entropy.flatten().double()  # [N]
    top = top_positions(values, rho)  # [N] bool, exactly ceil(rho * N) True
    return EntropySummary(
        tokens=values.numel(),
        mean=float(values.mean()) if values.numel() else float("nan"),
        percentiles={f"p{p}": quantile_higher(values, p / 100) for p in percentiles},
        share_below_001=float((values < NEAR_ZERO).double().mean()),
        rho=rho,
        top_tokens=int(top.sum()),
        top_threshold=float(values[top].min()),
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
