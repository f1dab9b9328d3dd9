"""Metrics of forking_policy_loss (one process) against numpy: means, clip fractions,
nearest-rank entropy percentiles, and NaN-safety of the masked sums."""

import math

import numpy as np
import pytest
import torch

from megatron_fork.forking import ForkingLossConfig, forking_policy_loss
from tests.forking.test_loss import HAND_CONFIG, hand_inputs


def test_metrics_match_numpy():
    n = 37
    gen = torch.Generator().manual_seed(4)
    old = -torch.rand(n, generator=gen, dtype=torch.float64) * 2
    logprob = old + torch.randn(n, generator=gen, dtype=torch.float64) * 0.4
    adv = torch.randn(n, generator=gen, dtype=torch.float64)
    valid = torch.rand(n, generator=gen) < 0.85
    entropy = (torch.randint(0, 9, (n,), generator=gen) * 0.3).to(torch.float32)  # with ties
    config = ForkingLossConfig(rho=0.4, dual_clip_c=1.5)
    _, metrics = forking_policy_loss(logprob, old, adv, valid, entropy, config)

    r = np.exp(logprob.numpy() - old.numpy())
    a, v, h = adv.numpy(), valid.numpy(), entropy.numpy()
    n_valid = int(v.sum())
    k = math.ceil(0.4 * n_valid)
    # Top k by (-entropy, index) among valid tokens.
    ranked = sorted(np.flatnonzero(v).tolist(), key=lambda i: (-float(h[i]), i))
    s = np.zeros(n, dtype=bool)
    s[ranked[:k]] = True

    assert metrics["num_valid_tokens"].item() == n_valid
    assert metrics["num_selected_tokens"].item() == k
    assert metrics["selected_fraction"].item() == pytest.approx(k / n_valid, rel=1e-6)
    assert metrics["clip_frac_low"].item() == pytest.approx(np.mean((a < 0) & (r < 0.8), where=s))
    assert metrics["clip_frac_high"].item() == pytest.approx(np.mean((a > 0) & (r > 1.28), where=s))
    assert metrics["clip_frac_dual"].item() == pytest.approx(np.mean((a < 0) & (r > 1.5), where=s))
    assert metrics["entropy_mean"].item() == pytest.approx(h[v].mean(dtype=np.float64), rel=1e-6)
    assert metrics["entropy_selected_mean"].item() == pytest.approx(
        h[s].mean(dtype=np.float64), rel=1e-6
    )
    assert metrics["entropy_selected_min"].item() == h[s].min()
    assert metrics["entropy_selected_max"].item() == h[s].max()
    for p in (50, 80, 95):
        assert metrics[f"entropy_p{p}"].item() == np.percentile(h[v], p, method="inverted_cdf")
        assert metrics[f"entropy_selected_p{p}"].item() == np.percentile(
            h[s], p, method="inverted_cdf"
        )


@pytest.mark.parametrize("n", [1, 3, 20, 21])
def test_entropy_percentiles_match_numpy_inverted_cdf(n):
    gen = torch.Generator().manual_seed(n)
    entropy = torch.rand(n, generator=gen) * 4
    zeros = torch.zeros(n, dtype=torch.float64)
    _, metrics = forking_policy_loss(
        zeros, zeros, zeros, torch.ones(n, dtype=torch.bool), entropy, ForkingLossConfig(rho=1.0)
    )
    h = entropy.numpy()
    for p in (50, 80, 95):
        expected = np.percentile(h, p, method="inverted_cdf")
        assert metrics[f"entropy_p{p}"].item() == expected
        assert metrics[f"entropy_selected_p{p}"].item() == expected


def test_nan_entropy_on_padding_does_not_reach_the_metrics():
    logprob, old, adv, valid, entropy = hand_inputs()
    entropy = entropy.clone()
    entropy[5] = float("nan")  # padding
    _, metrics = forking_policy_loss(
        logprob, old, adv, valid, entropy, ForkingLossConfig(**HAND_CONFIG)
    )
    assert torch.isfinite(metrics["entropy_mean"]) and torch.isfinite(metrics["entropy_p95"])
