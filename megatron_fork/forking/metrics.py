"""Metrics of one forking-token loss evaluation, reduced exactly over the ranks of a group.

Means and fractions: one SUM all-reduce of packed sums and counts. Entropy percentiles (nearest
rank, as numpy's ``inverted_cdf``) and the selected set's min/max: one batched radix select (two
all-reduces), so they are exact over all ranks, not averages of per-rank percentiles.
"""

import torch

from megatron_fork.forking.order_statistics import float_to_key, key_to_float, kth_largest
from megatron_fork.forking.surrogate import Surrogate
from megatron_fork.parallel.groups import all_reduce_

PERCENTILES = (50, 80, 95)


def _nearest_rank_k(total: torch.Tensor, q: float) -> torch.Tensor:
    """k (largest-first) of the q-quantile by nearest rank: ascending rank ceil(q * n)."""
    ascending = torch.ceil(total.to(torch.float64) * q - 1e-9).clamp(min=1).to(torch.int64)
    return torch.where(total > 0, total - ascending + 1, 0)


def _order_statistic_rows():
    """(name, mask index, k_of_total) per radix-select row: 0 = valid tokens, 1 = selected."""
    rows = []
    for subset, label in ((0, "entropy"), (1, "entropy_selected")):
        for p in PERCENTILES:
            rows.append((f"{label}_p{p}", subset, lambda t, q=p / 100: _nearest_rank_k(t, q)))
    rows.append(("entropy_selected_max", 1, lambda t: t.clamp(max=1)))
    rows.append(("entropy_selected_min", 1, lambda t: t))
    return rows


def _entropy_order_statistics(entropy, valid, selected, group) -> dict[str, torch.Tensor]:
    rows = _order_statistic_rows()
    subsets = torch.stack([valid.flatten(), selected.flatten()])
    candidates = subsets[[subset for _, subset, _ in rows]]  # [rows, N]
    k_fns = [k_fn for _, _, k_fn in rows]
    k_of_total = lambda totals: torch.stack([fn(t) for fn, t in zip(k_fns, totals, strict=True)])
    stats, _ = kth_largest(float_to_key(entropy.flatten()), candidates, k_of_total, group)
    values = torch.where(stats.total > 0, key_to_float(stats.threshold), float("nan"))
    return {name: values[i] for i, (name, _, _) in enumerate(rows)}


def forking_metrics(
    entropy: torch.Tensor,
    valid: torch.Tensor,
    selected: torch.Tensor,
    surrogate: Surrogate,
    log_ratio: torch.Tensor,
    group=None,
) -> dict[str, torch.Tensor]:
    """0-dim fp32 tensors, identical on every rank of ``group``. ``log_ratio``: logprob minus
    old logprob on the valid tokens (for the approximate KL)."""
    with torch.no_grad():
        entropy = entropy.detach().to(torch.float32)
        approx_kl = log_ratio.exp() - 1.0 - log_ratio  # k3 of KL(pi_old || pi)
        # Sums with torch.where, not a product with the mask: NaN * 0 is NaN.
        over = lambda mask, values: torch.where(mask, values, 0.0).sum()
        sums = torch.stack(
            [
                valid.sum(),
                selected.sum(),
                over(valid, entropy),
                over(selected, entropy),
                (surrogate.clipped_low & selected).sum(),
                (surrogate.clipped_high & selected).sum(),
                (surrogate.clipped_dual & selected).sum(),
                over(valid, approx_kl),
            ]
        ).to(torch.float64)
        all_reduce_(sums, group)
        n_valid, n_sel = sums[0], sums[1]
        per_valid = lambda s: (s / n_valid).float() if n_valid > 0 else torch.tensor(float("nan"))
        per_sel = lambda s: (s / n_sel).float() if n_sel > 0 else torch.tensor(float("nan"))
        metrics = {
            "num_valid_tokens": n_valid.float(),
            "num_selected_tokens": n_sel.float(),
            "selected_fraction": per_valid(n_sel),
            "entropy_mean": per_valid(sums[2]),
            "entropy_selected_mean": per_sel(sums[3]),
            "clip_frac_low": per_sel(sums[4]),
            "clip_frac_high": per_sel(sums[5]),
            "clip_frac_dual": per_sel(sums[6]),
            "approx_kl": per_valid(sums[7]),
        }
        metrics.update(_entropy_order_statistics(entropy, valid, selected, group))
    return metrics
