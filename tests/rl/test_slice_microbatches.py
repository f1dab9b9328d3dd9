"""A DP rank's slice -> packed and padded micro-batches, worked by hand; the step layouts rank 0
decides (which samples train where, filler samples left out of packing)."""

import pytest
import torch

from megatron_fork.rl.rollout_scatter import RolloutToScatter, ScatterGroups, scatter_rollout
from megatron_fork.rl.slice_microbatches import packed_microbatch, padded_microbatch
from megatron_fork.rl.step_layout import (
    StepLayout,
    layout_metrics,
    packed_step_layout,
    padded_step_layout,
)
from megatron_fork.rollout.types import FinishReason, Sample
from megatron_fork.trainer.packing import cp_token_indices, packing_layout
from megatron_fork.trainer.step_tokens import microbatch_rows

PAD = 0
LP = [-0.5, -1.0, -1.5, -2.0]


def _slice(samples, advantages, trainable):
    layout = StepLayout.one_microbatch([list(range(len(samples)))])
    step = RolloutToScatter(samples, torch.tensor(advantages), trainable, layout)
    return scatter_rollout(lambda: step, ScatterGroups(), "cpu")


def _two_samples(trainable=(True, True)):
    samples = [
        Sample("a", (5, 6), (7, 8, 9), tuple(LP[:3]), FinishReason("stop"), 0),
        Sample("b", (3,), (4,), (LP[3],), FinishReason("stop"), 0),
    ]
    return _slice(samples, [2.0, -1.0], list(trainable))


def test_packed_microbatch_by_hand():
    """a: inputs 5 6 7 8 -> targets 6 7 8 9, the response's 3 valid; b: 3 -> 4. Slots of 4
    and 1, the last padded to the row multiple 8; positions restart in each slot."""
    mb = packed_microbatch(_two_samples(), [0, 1], packing_layout(1, 8), stride=16, pad_id=PAD)
    assert mb.tokens.tolist() == [[5, 6, 7, 8, 3, PAD, PAD, PAD]]
    assert mb.target.tolist() == [[6, 7, 8, 9, 4, PAD, PAD, PAD]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    assert mb.valid_mask.tolist() == [[False, True, True, True, True, False, False, False]]
    assert mb.old_logprob.tolist() == [[0.0, *LP, 0.0, 0.0, 0.0]]
    assert mb.advantages.tolist() == [[0.0, 2.0, 2.0, 2.0, -1.0, 0.0, 0.0, 0.0]]
    assert mb.token_order.tolist() == [[0, 1, 2, 3, 16, 17, 18, 19]]
    params = mb.packed_seq_params
    for name in ("cu_seqlens_q", "cu_seqlens_kv"):
        assert getattr(params, name).tolist() == [0, 4, 8]
        assert getattr(params, name).dtype == torch.int32
    assert params.cu_seqlens_q_padded is None and params.cu_seqlens_kv_padded is None  # CP=1
    assert params.qkv_format == "thd" and params.max_seqlen_q == params.max_seqlen_kv == 4
    assert mb.num_samples == microbatch_rows(mb) == 2


def test_padded_microbatch_by_hand_and_the_same_tokens_as_packed():
    rollout = _two_samples(trainable=(True, False))
    mb = padded_microbatch(rollout, [0, 1], seq_len=5, pad_id=PAD)
    assert mb.tokens.tolist() == [[5, 6, 7, 8, PAD], [3, PAD, PAD, PAD, PAD]]
    assert mb.valid_mask.tolist() == [[False, True, True, True, False], [False] * 5]
    assert mb.token_order.tolist() == [list(range(5)), list(range(5, 10))]
    assert mb.packed_seq_params is None and microbatch_rows(mb) == 2
    with pytest.raises(ValueError, match="step sample 0 has 4 positions, more than the row"):
        padded_microbatch(rollout, [0], seq_len=3, pad_id=PAD)


def test_context_parallel_slots_divide_by_two_cp_in_te_order():
    """CP=2: slots padded to 4 (2 x CP), the total to 8: a = [0..3], b = [4..7]; CP rank 0
    keeps chunks 0 and 3 of each slot (positions 0, 3 and 4, 7), rank 1 chunks 1 and 2 (the
    multi-rank shard itself: test_packed_training_parity's CP case)."""
    mb = packed_microbatch(_two_samples(), [0, 1], packing_layout(2, 8), stride=16, pad_id=PAD)
    params = mb.packed_seq_params
    for name in ("cu_seqlens_q", "cu_seqlens_kv", "cu_seqlens_q_padded", "cu_seqlens_kv_padded"):
        assert getattr(params, name).tolist() == [0, 4, 8]  # TE's CP needs the padded slots
    assert cp_token_indices([4, 4], 2, 0).tolist() == [0, 3, 4, 7]
    assert cp_token_indices([4, 4], 2, 1).tolist() == [1, 2, 5, 6]


def test_empty_microbatch_is_padding_only():
    mb = packed_microbatch(_two_samples(), [], packing_layout(1, 8), stride=16, pad_id=PAD)
    assert mb.tokens.tolist() == [[PAD] * 8] and not mb.valid_mask.any()
    assert mb.packed_seq_params.cu_seqlens_q.tolist() == [0, 8] and mb.num_samples == 0


def test_a_sample_without_prompt_is_refused():
    samples = [Sample("x", (), (4, 5), (-1.0, -1.0), FinishReason("stop"), 0)]
    with pytest.raises(ValueError, match="step sample 0 has no prompt token"):
        packed_microbatch(_slice(samples, [1.0], [True]), [0], packing_layout(1, 8), 8, PAD)


def test_packed_step_layout_leaves_fillers_out_and_counts_tokens():
    """2 mini-batches of 3: the first's trainable samples {0, 2} over 2 ranks; the second is
    filler only: no micro-batches, no optimizer step."""
    positions = [5, 9, 3, 4, 4, 4]
    trainable = [True, False, True, False, False, False]
    layout = packed_step_layout(positions, trainable, 2, 2, 16, packing_layout(1, 8))
    assert layout.trained == (True, False)
    assert layout.microbatches == ((((0,),), ()), (((2,),), ()))
    assert layout.microbatch_counts() == [1, 0]
    assert layout.real_tokens == 8 and layout.computed_tokens == 16
    assert layout_metrics(layout)["train/real_token_fraction"] == 0.5
    assert layout.overlong_samples == 0
    over = packed_step_layout([20, 3], [True, True], 1, 1, 16, packing_layout(1, 8))
    assert over.overlong_samples == 1


def test_padded_step_layout_is_the_contiguous_rows_of_before():
    layout = padded_step_layout([3] * 8, [True] * 6 + [False] * 2, 2, 2, 1, 8)
    assert layout.microbatches == (
        (((0,), (1,)), ((4,), (5,))),
        (((2,), (3,)), ((6,), (7,))),
    )
    assert layout.trained == (True, True)
    assert layout.real_tokens == 18 and layout.computed_tokens == 64
