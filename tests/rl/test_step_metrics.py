"""Combining per-micro-batch loss metrics into one step: hand-worked token-weighted means."""

import math

import pytest
import torch

from megatron_fork.rl.step_metrics import combine_microbatch_metrics


def mb(valid, selected, entropy, clip_low, loss):
    return {
        "num_valid_tokens": torch.tensor(float(valid)),
        "num_selected_tokens": torch.tensor(float(selected)),
        "selected_fraction": torch.tensor(selected / valid),
        "entropy_mean": torch.tensor(entropy),
        "entropy_selected_mean": torch.tensor(2 * entropy),
        "clip_frac_low": torch.tensor(clip_low),
        "clip_frac_high": torch.tensor(0.0),
        "clip_frac_dual": torch.tensor(0.0),
        "approx_kl": torch.tensor(0.0),
        "loss": torch.tensor(loss),
    }


def test_token_weighted_means_and_loss_per_optimizer_step():
    outputs = [mb(10, 2, 1.0, 0.5, 0.25), mb(30, 8, 3.0, 0.0, 0.75)]
    combined = combine_microbatch_metrics(outputs, "train/", optimizer_steps=2)
    assert combined["train/num_valid_tokens"] == 40
    assert combined["train/num_selected_tokens"] == 10
    assert combined["train/entropy_mean"] == pytest.approx((10 * 1 + 30 * 3) / 40)
    assert combined["train/selected_fraction"] == pytest.approx(10 / 40)
    assert combined["train/clip_frac_low"] == pytest.approx(2 * 0.5 / 10)  # per selected token
    assert combined["train/entropy_selected_mean"] == pytest.approx((2 * 2 + 8 * 6) / 10)
    assert combined["train/loss"] == pytest.approx((0.25 + 0.75) / 2)


def test_micro_batches_without_selected_tokens_are_left_out_of_selected_means():
    outputs = [mb(10, 0, 1.0, float("nan"), 0.0), mb(10, 5, 1.0, 0.2, 0.0)]
    outputs[0]["entropy_selected_mean"] = torch.tensor(float("nan"))
    combined = combine_microbatch_metrics(outputs)
    assert combined["clip_frac_low"] == pytest.approx(0.2)
    assert not math.isnan(combined["entropy_selected_mean"])
