"""The ``microbatch_selected_mean`` normaliser in one call of forking_policy_loss.

One call is one micro-batch: the loss is the token mean over its selected tokens (the hand-worked
example of test_loss.py: sum_S o_t = 1.18 over |S| = 4). The rows weighting is step plumbing,
tested through Megatron's schedule in tests/trainer/test_loss_microbatch_mean_verl.py; it hands
the loss fractional normalisers (|S_m| / rows_m in per-token mode), which must not be rounded up.
"""

import pytest
import torch

from megatron_fork.forking import ForkingLossConfig, forking_policy_loss
from tests.forking.test_loss import HAND_CONFIG, hand_inputs


def test_one_call_is_the_token_mean_over_its_selected_tokens():
    logprob, old, adv, valid, entropy = hand_inputs()
    config = ForkingLossConfig(normalizer="microbatch_selected_mean", **HAND_CONFIG)
    value, metrics = forking_policy_loss(logprob, old, adv, valid, entropy, config)
    value.backward()
    assert value.item() == pytest.approx(-1.18 / 4, abs=1e-12)
    assert logprob.grad[0].item() == pytest.approx(-2.2 / 4, abs=1e-12)
    assert metrics["num_selected_tokens"].item() == 4


@pytest.mark.parametrize("normalizer", [0.5, torch.tensor(0.25, dtype=torch.float64)])
def test_a_normaliser_below_one_divides_as_given(normalizer):
    logprob, old, adv, valid, entropy = hand_inputs()
    config = ForkingLossConfig(normalizer="microbatch_selected_mean", **HAND_CONFIG)
    value, _ = forking_policy_loss(logprob, old, adv, valid, entropy, config, normalizer=normalizer)
    value.backward()
    n = float(normalizer)
    assert value.item() == pytest.approx(-1.18 / n, abs=1e-12)
    assert logprob.grad[0].item() == pytest.approx(-2.2 / n, abs=1e-12)
