"""The planner's cost of packed and padded training: hand-worked mini-batches, the closed form
against the trainer's own packer (``trainer/packing.py``) and padded statistics, FLOPs summed
sample by sample, memory at the token budget, and the budget refusals."""

import dataclasses
import math

import pytest

from megatron_fork.planning import (
    H100_80GB,
    SUGGESTED_LAYOUTS,
    RolloutPlacement,
    Workload,
    check_layout,
    compare_packing,
    estimate_step_time,
    largest_budget,
    plan_memory,
)
from megatron_fork.planning.activations import qwen3_block
from megatron_fork.planning.batch_cost import packed_cost, padded_cost, response_lengths
from megatron_fork.planning.flops import forward_flops, packed_forward_flops, training_flops
from megatron_fork.planning.memory import training_breakdown
from tests.planning.layouts import QWEN3_8B, SEQ
from tests.planning.layouts import layout as _layout

WORKLOAD = Workload(512, 16, 256, 8192, 16, generation_rounds=1.5, max_response_tokens=20480)
DISAGGREGATED = RolloutPlacement(False, 32, 2, False)
TRAINING = "training (fwd + bwd + optimizer)"


def test_packed_cost_of_three_samples_by_hand():
    # 5, 9, 14 positions at CP=2: each padded to 2 x CP = 4 -> 8, 12, 16 (36 positions); a
    # budget of 20 floors to the row unit 8 -> 16 usable: ceil(36 / 16) = 3 micro-batches, each
    # rounded up to 8, half of (8 - 4) on average -> 36 + 3 * 2 = 42 computed; attention stays
    # within each sample: 8^2 + 12^2 + 16^2 = 464 (padded, 14^2 * 3 = 588 would be the row's)
    cost = packed_cost([5, 9, 14], 1, 20, row_multiple=8, sample_multiple=4)
    assert (cost.real_tokens, cost.computed_tokens) == (28, 42)
    assert (cost.attention_pairs, cost.micro_batches) == (464, 3)
    # two DP ranks: 100 + 300 + 50 + 250 = 700 positions, 350 per rank, one micro-batch of at
    # most 512 each; tails 2 x 1 x (64 - 1) / 2 = 63
    cost = packed_cost([100, 300, 50, 250], 2, 512, row_multiple=64, sample_multiple=1)
    assert (cost.computed_tokens, cost.micro_batches) == (763, 1)
    assert cost.attention_pairs == 100**2 + 300**2 + 50**2 + 250**2 == 165_000


def test_padded_cost_of_three_samples_by_hand():
    # every sample a row of the longest, 14 -> 16: 3 x 16 = 48 positions, 3 x 16^2 = 768
    # attention, 3 rows in micro-batches of 2 -> 2
    cost = padded_cost([5, 9, 14], 1, micro_batch_size=2, row_multiple=8)
    assert (cost.real_tokens, cost.computed_tokens) == (28, 48)
    assert (cost.attention_pairs, cost.micro_batches) == (768, 2)


def test_the_trainer_packer_agrees_on_the_hand_worked_samples():
    packing = pytest.importorskip("megatron_fork.trainer.packing")
    plan = packing.plan_mini_batch([5, 9, 14], 1, 20, packing.packing_layout(2, 8))
    assert plan.num_microbatches == 3
    # each sample alone: 8, 12 + a tail of 4, 16 -> 40 computed (the closed form's 42 counts
    # an average tail of 2 per micro-batch)
    assert packing.plan_stats(plan).computed_tokens == 40
    padded = packing.padded_stats([5, 9, 14], 8)
    cost = padded_cost([5, 9, 14], 1, 2, 8)
    assert (padded.computed_tokens, padded.computed_attention) == (48, 768)
    assert (cost.computed_tokens, cost.attention_pairs) == (48, 768)


@pytest.mark.parametrize(
    "dp, budget, row",  # Qwen3-8B's TP2 x CP2 x DP16 (FP8), 14B's DP8, 32B's DP2 (TP8, FP8)
    [(16, 22528, 512), (16, 32768, 512), (8, 32768, 1024), (2, 32768, 2048), (2, 22528, 2048)],
)
def test_closed_form_matches_the_trainer_packer(dp, budget, row):
    """One mini-batch of the paper's workload (512 samples, 8192-token mean responses up to
    20480): the closed form's micro-batch count is the trainer's, its tokens and attention
    within a few percent (the trainer adds each micro-batch's round-up to its last sample)."""
    packing = pytest.importorskip("megatron_fork.trainer.packing")
    lengths = WORKLOAD.mini_batch_lengths()
    cost = packed_cost(lengths, dp, budget, row, sample_multiple=4)
    plan = packing.plan_mini_batch(lengths, dp, budget, packing.packing_layout(2, row))
    stats = packing.plan_stats(plan)
    assert plan.num_microbatches in (cost.micro_batches, cost.micro_batches + 1)
    assert stats.real_tokens == cost.real_tokens
    assert stats.computed_tokens == pytest.approx(cost.computed_tokens, rel=0.04)
    assert stats.computed_attention == pytest.approx(cost.attention_pairs, rel=0.03)


def test_packed_flops_are_the_sum_over_samples():
    block, vocab = qwen3_block(QWEN3_8B), QWEN3_8B.vocab_size
    lengths = [300, 7000, 20480]
    packed = packed_forward_flops(block, 36, vocab, sum(lengths), sum(n * n for n in lengths))
    each = [forward_flops(block, 36, vocab, n) for n in lengths]
    for part in ("attention_linear", "mlp", "attention_core", "logits"):
        assert getattr(packed, part) == pytest.approx(sum(getattr(f, part) for f in each))
    single = packed_forward_flops(block, 36, vocab, 4096, 4096**2)
    assert single == forward_flops(block, 36, vocab, 4096)


def test_packed_training_time_is_per_sample_flops():
    """At CP=4 without SP or FP8 each sample pads to 8 = the row unit: no micro-batch tail, so
    training is exactly the sum of each sample's own training FLOPs (padded to 8)."""
    layout = _layout(
        tensor_parallel=1, context_parallel=4, data_parallel=16, sequence_parallel=False
    )
    layout = dataclasses.replace(layout, max_tokens_per_microbatch=SEQ)
    assert (layout.row_multiple, layout.sample_multiple) == (8, 8)
    rollout = RolloutPlacement(False, 64, 1, False)
    estimate = estimate_step_time(QWEN3_8B, layout, rollout, H100_80GB, WORKLOAD)
    block = qwen3_block(QWEN3_8B)
    flops = sum(
        training_flops(forward_flops(block, 36, QWEN3_8B.vocab_size, math.ceil(n / 8) * 8), "none")
        for n in WORKLOAD.mini_batch_lengths()
    )
    speed = 64 * H100_80GB.peak_bf16_tflops * 1e12 * 0.35
    assert estimate.phases[TRAINING] == pytest.approx(16 * flops / speed)


def test_packing_saves_what_padding_computed():
    layout, _, _, _ = SUGGESTED_LAYOUTS["qwen3_8b"]
    figures = compare_packing(QWEN3_8B, layout, H100_80GB, WORKLOAD)
    # padded: 8192 rows of 20736 positions (256 + 20480 - 1, to 8) for 8448 of the mean
    assert figures["padded: real tokens computed (%)"] == pytest.approx(
        100 * (256 + 8192 - 1) / 20736, rel=0.01
    )
    assert figures["packed: real tokens computed (%)"] > 98
    assert figures["packed / padded training"] < 0.45  # ~2.5x the tokens, ~6x the attention
    assert figures["padded: micro-batches per DP rank"] == 32  # 512 / 16 ranks, 1 row each
    assert figures["packed: micro-batches per DP rank"] == 13  # ~270k positions / 22528
    padded = dataclasses.replace(layout, max_tokens_per_microbatch=None)
    # a padded layout compares against packing at its own micro-batch's tokens: the same
    assert compare_packing(QWEN3_8B, padded, H100_80GB, WORKLOAD) == figures


def test_response_lengths_keep_the_mean_and_the_cap():
    lengths = response_lengths(8192, 20480, 512)
    assert sum(lengths) / 512 == pytest.approx(8192, rel=0.001)
    assert max(lengths) == 20480 and min(lengths) >= 1
    assert 0.10 < lengths.count(20480) / 512 < 0.115  # exp(-20480 / 9177): 10.7% capped
    second = sum(n * n for n in lengths) / 512 / 8192**2
    assert 1.6 < second < 1.7  # sum(len^2) above n * mean^2: the tail's attention
    assert response_lengths(100, 100, 3) == [100, 100, 100]
    with pytest.raises(ValueError, match="mean"):
        response_lengths(300, 200, 3)


def test_memory_is_planned_at_the_budget():
    # 32768 positions over CP=2 -> 16384 per GPU; 68,672 bytes per token per layer (TP=2 + SP)
    # x 36 layers; logits 4 bytes x 76,032 x 16384
    parts = training_breakdown(QWEN3_8B, _layout(max_tokens_per_microbatch=32768), 0)
    assert parts["activations (36 layers x 1 in flight)"] == 68_672 * 16_384 * 36
    assert parts["logits bf16 [tokens, V/t] + gradient"] == 4 * 76_032 * 16_384
    # the padded plan of micro_batch_size x sequence_length is the same at the same tokens
    padded = training_breakdown(QWEN3_8B, _layout(micro_batch_size=2, sequence_length=16384), 0)
    assert padded == parts


def test_largest_budget_fits_and_one_unit_more_does_not():
    layout = _layout(max_tokens_per_microbatch=SEQ)
    budget = largest_budget(QWEN3_8B, layout, DISAGGREGATED, H100_80GB)
    assert budget % layout.row_multiple == 0 and budget >= SEQ
    fits = [
        plan_memory(
            QWEN3_8B,
            dataclasses.replace(layout, max_tokens_per_microbatch=b),
            DISAGGREGATED,
            H100_80GB,
        ).fits
        for b in (budget, budget + layout.row_multiple)
    ]
    assert fits == [True, False]


def test_a_budget_below_the_longest_sample_is_refused():
    with pytest.raises(ValueError, match=r"max_tokens_per_microbatch=20480 is below the longest"):
        check_layout(QWEN3_8B, _layout(max_tokens_per_microbatch=20480))
    with pytest.raises(ValueError, match=r"exceeds max_tokens_per_microbatch=16"):
        packed_cost([5, 30], 1, 16, row_multiple=8, sample_multiple=4)
    with pytest.raises(ValueError, match="pad max_tokens_per_microbatch to a multiple of 4"):
        check_layout(QWEN3_8B, _layout(max_tokens_per_microbatch=SEQ + 2))


def test_a_budget_too_large_for_memory_says_to_lower_it():
    plan = plan_memory(
        QWEN3_8B, _layout(max_tokens_per_microbatch=4 * SEQ), DISAGGREGATED, H100_80GB
    )
    assert not plan.fits
    with pytest.raises(ValueError, match=r"max_tokens_per_microbatch below 90112"):
        plan.require_fit()
