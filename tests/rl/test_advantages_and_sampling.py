"""GRPO advantages and DAPO dynamic sampling against hand-worked numbers."""

import math

import pytest
import torch

from megatron_fork.rl.advantages import AdvantageConfig, group_advantages, token_advantages
from megatron_fork.rl.dynamic_sampling import DynamicSamplingConfig, fill_batch


def test_group_advantages_hand_worked():
    rewards = torch.tensor([[1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0]])
    adv = group_advantages(rewards)
    # Group 0: mean -0.5, unbiased std sqrt(((1.5)^2 + 3 * 0.5^2) / 3) = 1.
    expected = torch.tensor([1.5, -0.5, -0.5, -0.5]) / (1.0 + 1e-6)
    torch.testing.assert_close(adv[0], expected)
    assert torch.equal(adv[1], torch.zeros(4))  # equal rewards: no signal
    centred = group_advantages(rewards, AdvantageConfig(normalize_by_std=False))
    torch.testing.assert_close(centred[0], torch.tensor([1.5, -0.5, -0.5, -0.5]))


def test_group_of_one_and_bad_shape():
    assert torch.equal(group_advantages(torch.tensor([[3.0], [1.0]])), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="num_prompts"):
        group_advantages(torch.tensor([1.0, 2.0]))


def test_token_advantages_cover_only_the_response():
    mask = torch.tensor([[False, True, True], [False, False, True]])
    out = token_advantages(torch.tensor([2.0, -1.0]), mask)
    assert torch.equal(out, torch.tensor([[0.0, 2.0, 2.0], [0.0, 0.0, -1.0]]))
    with pytest.raises(ValueError, match="valid_mask"):
        token_advantages(torch.tensor([1.0]), mask)


def _rounds(*rounds):
    """generate_round returning prepared lists of reward rows, one list per round."""
    calls = []

    def generate(index):
        calls.append(index)
        return [torch.tensor(r) for r in rounds[index]]

    return generate, calls


def test_fill_batch_drops_equal_groups_and_refills():
    generate, calls = _rounds(
        [[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]],  # one informative
        [[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]],  # two more
    )
    batch = fill_batch(generate, lambda g: g, target_groups=2)
    assert calls == [0, 1] and batch.rounds == 2
    assert len(batch.groups) == 2 and not batch.short  # 3 informative, trimmed to 2
    assert torch.equal(batch.groups[0], torch.tensor([1.0, -1.0]))
    assert batch.dropped_equal_reward == 3  # two in round 0, [0, 0] in round 1
    assert batch.dropped_per_round == [2, 1]
    assert batch.generated_groups == 6


def test_fill_batch_reports_a_short_batch():
    generate, _ = _rounds([[1.0, 1.0]], [[0.0, 0.0]])
    batch = fill_batch(generate, lambda g: g, 3, DynamicSamplingConfig(max_rounds=2))
    assert batch.short and batch.groups == [] and batch.rounds == 2


def test_disabled_keeps_the_first_round():
    generate, calls = _rounds([[1.0, 1.0], [1.0, 0.0]])
    batch = fill_batch(generate, lambda g: g, 5, DynamicSamplingConfig(enabled=False))
    assert calls == [0] and len(batch.groups) == 2 and batch.short


def test_config_validation():
    with pytest.raises(ValueError, match="max_rounds"):
        DynamicSamplingConfig(max_rounds=0)
    assert math.isclose(AdvantageConfig().epsilon, 1e-6)
