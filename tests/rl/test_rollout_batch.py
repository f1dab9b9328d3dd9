"""Samples -> micro-batches: a hand-worked layout, and the alignment checked against the model
itself (teacher-forced log-probs at the valid positions are the engine's sample log-probs)."""

import pytest
import torch

from megatron_fork.rl.rollout_batch import samples_to_microbatches
from megatron_fork.rollout.torch_engine import TorchRolloutEngine
from megatron_fork.rollout.types import FinishReason, GenerationRequest, Sample, SamplingParams
from tests.support.tiny_qwen3 import tiny_qwen3_model


def _sample(prompt, output, logprobs, rid="s"):
    return Sample(rid, tuple(prompt), tuple(output), tuple(logprobs), FinishReason("length"), 0)


def test_hand_worked_layout():
    samples = [_sample([5, 6], [7, 8, 9], [-0.1, -0.2, -0.3]), _sample([4], [3], [-0.5])]
    (mb,) = samples_to_microbatches(samples, torch.tensor([2.0, -1.0]), [4, 9], 6, 2)
    # Row 0: inputs 5 6 7 8 9 pad; targets 6 7 8 9 pad pad; the response 7 8 9 is the target
    # at positions 1, 2, 3.
    assert mb.tokens[0].tolist() == [5, 6, 7, 8, 9, 0]
    assert mb.target[0].tolist() == [6, 7, 8, 9, 0, 0]
    assert mb.valid_mask[0].tolist() == [False, True, True, True, False, False]
    torch.testing.assert_close(mb.old_logprob[0], torch.tensor([0, -0.1, -0.2, -0.3, 0, 0]))
    assert mb.advantages[0].tolist() == [0.0, 2.0, 2.0, 2.0, 0.0, 0.0]
    # Row 1: input 4, target 3 at position 0.
    assert mb.valid_mask[1].tolist() == [True, False, False, False, False, False]
    assert mb.advantages[1].tolist() == [-1.0, 0, 0, 0, 0, 0]
    assert mb.token_order[1, 0] == 9 * 6 and mb.token_order[0, 5] == 4 * 6 + 5


def test_micro_batch_split_and_errors():
    samples = [_sample([1], [2], [-1.0], rid=str(i)) for i in range(5)]
    mbs = samples_to_microbatches(samples, torch.zeros(5), list(range(5)), 4, 2)
    assert [mb.tokens.shape[0] for mb in mbs] == [2, 2, 1]
    with pytest.raises(ValueError, match="seq_len"):
        samples_to_microbatches([_sample([1] * 5, [2], [-1.0])], torch.zeros(1), [0], 4, 2)
    with pytest.raises(ValueError, match="log-probs"):
        samples_to_microbatches([_sample([1], [2, 3], [-1.0])], torch.zeros(1), [0], 4, 2)
    with pytest.raises(ValueError, match="must match"):
        samples_to_microbatches(samples, torch.zeros(4), list(range(5)), 4, 2)


def test_valid_positions_line_up_with_the_models_own_log_probs():
    model = tiny_qwen3_model(seed=5)
    requests = [
        GenerationRequest((3, 1, 4), SamplingParams(max_new_tokens=6, seed=1)),
        GenerationRequest((2, 7), SamplingParams(max_new_tokens=4, seed=2)),
    ]
    samples = TorchRolloutEngine(model).generate(requests)
    (mb,) = samples_to_microbatches(samples, torch.ones(2), [0, 1], 12, 2)
    with torch.no_grad():
        logits = model(input_ids=mb.tokens).logits  # right padding: valid rows see no pad
    logprob = torch.log_softmax(logits, -1).gather(-1, mb.target[..., None])[..., 0]
    torch.testing.assert_close(
        logprob[mb.valid_mask], mb.old_logprob[mb.valid_mask], atol=2e-5, rtol=0
    )


def test_filler_rows_carry_no_valid_tokens():
    samples = [_sample([5], [6, 7], [-0.1, -0.2], rid=str(i)) for i in range(3)]
    (mb,) = samples_to_microbatches(
        samples, torch.ones(3), [0, 1, 2], 4, 3, trainable=[True, False, True]
    )
    assert mb.valid_mask.sum(1).tolist() == [2, 0, 2]
    assert mb.advantages[1].abs().sum() == 0 and mb.tokens[1].tolist() == [5, 6, 7, 0]
