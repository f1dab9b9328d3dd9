"""PolicyMicroBatch: shape and dtype checks, and the CP shard matching Megatron's split."""

import pytest
import torch

from megatron_fork.trainer.policy_batch import PolicyMicroBatch, canonical_token_order


def _batch(**overrides):
    b, s = 2, 8
    fields = dict(
        tokens=torch.zeros(b, s, dtype=torch.int64),
        position_ids=torch.arange(s).expand(b, s),
        target=torch.ones(b, s, dtype=torch.int64),
        valid_mask=torch.ones(b, s, dtype=torch.bool),
        old_logprob=torch.zeros(b, s),
        advantages=torch.ones(b, s),
        token_order=canonical_token_order(torch.tensor([3, 4]), s),
    )
    fields.update(overrides)
    return PolicyMicroBatch(**fields)


def test_canonical_order_is_sample_major():
    order = canonical_token_order(torch.tensor([3, 4]), 8)
    assert order[0, 0] == 24 and order[1, 7] == 39


def test_mismatched_field_shape_is_named():
    with pytest.raises(ValueError, match="advantages"):
        _batch(advantages=torch.ones(2, 7))


def test_wrong_dtypes_are_named():
    with pytest.raises(TypeError, match="valid_mask"):
        _batch(valid_mask=torch.ones(2, 8))
    with pytest.raises(TypeError, match="target"):
        _batch(target=torch.ones(2, 8))
    with pytest.raises(TypeError, match="old_logprob"):
        _batch(old_logprob=torch.zeros(2, 8, dtype=torch.int64))


def test_not_two_dimensional_is_rejected():
    with pytest.raises(ValueError, match=r"\[b, s\]"):
        _batch(tokens=torch.zeros(16, dtype=torch.int64))
