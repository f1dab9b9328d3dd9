"""Packed micro-batch planning (issue 14, point 1): hand-worked examples, properties, and the
real-token fraction packed against today's pad-to-longest on a long-CoT length distribution."""

import bisect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_fork.rl.train_batch import layout_row_multiple
from megatron_fork.trainer.packing import (
    EMPTY_MICROBATCH,
    PackingLayout,
    _split_to,
    attention_weight,
    balanced_partition,
    cp_token_indices,
    pack_microbatch,
    packing_layout,
    padded_stats,
    plan_mini_batch,
    plan_stats,
    sample_costs,
)


def test_layout_from_row_multiple():
    assert packing_layout(1, layout_row_multiple(1, 2, True, None)) == PackingLayout(1, 8)
    assert packing_layout(2, layout_row_multiple(2, 1, False, None)) == PackingLayout(4, 8)
    # CP=4 with TP=2 and SP: rows divide by lcm(8, 2 x CP, TP x CP) = 8; samples by 8
    assert packing_layout(4, layout_row_multiple(4, 2, True, None)) == PackingLayout(8, 8)
    with pytest.raises(ValueError, match="multiple of sample_multiple"):
        PackingLayout(4, 6)


def test_pack_microbatch_by_hand():
    layout = PackingLayout(4, 8)
    mb = pack_microbatch([2, 0], [5, 9, 6], layout)  # samples of 6 then 5 positions
    assert mb.lengths == (6, 5)
    assert mb.padded_lengths == (8, 8)
    assert mb.cu_seqlens().tolist() == [0, 6, 11]
    assert mb.cu_seqlens_padded().tolist() == [0, 8, 16]
    assert mb.cu_seqlens().dtype == mb.cu_seqlens_padded().dtype == torch.int32
    assert (mb.max_seqlen, mb.total_length, mb.real_tokens) == (8, 16, 11)
    # 5 -> 8 and 2 -> 4 sum to 12: the last sample takes the 4 that round the total to 16
    assert pack_microbatch([0, 1], [5, 2], layout).padded_lengths == (8, 8)


def test_kk_by_hand():
    # The textbook KK case: {8,7,6,5,4} -> 8-7 -> 1, 6-5 -> 1, then {4} with (8|7) gives
    # (4+7 | 8), then with (6|5): (11+5 | 8+6) = 16 | 14 (the optimum 15 | 15 is missed).
    assert balanced_partition([8, 7, 6, 5, 4], 2) == [[1, 3, 4], [0, 2]]
    groups = balanced_partition([1, 2, 3, 4, 5, 6], 3, equal_count=True)
    assert sorted(len(g) for g in groups) == [2, 2, 2]
    assert sorted(sum(i + 1 for i in g) for g in groups) == [7, 7, 7]
    with pytest.raises(ValueError, match="non-empty groups"):
        balanced_partition([1, 2], 3)


def test_sample_costs_attention_term():
    assert sample_costs([10, 20], 0.0) == [10, 20]
    assert sample_costs([10, 20], 0.5) == [60, 220]


def _indices(plan):
    return [[mb.sample_indices for mb in rank] for rank in plan.ranks]


def test_plan_by_hand():
    layout = PackingLayout(1, 1)
    # DP by KK: (6|4), (4|4), (3|3) -> (6+4 | 4+4) -> (13 | 11): rank 0 {6,4,3}, rank 1 {4,4,3}.
    # Budget 6: rank 0 needs 3 (6 | 4 | 3), rank 1 could fit 2 by tokens but 4+3 > 6, so 3.
    plan = plan_mini_batch([6, 4, 4, 4, 3, 3], 2, 6, layout)
    assert _indices(plan) == [[(0,), (3,), (5,)], [(1,), (2,), (4,)]]
    # Budget 10: rank 1 {4,3,3} = 10 fits one; rank 0 {10} is one. Budget 8: rank 1 needs 2,
    # rank 0's lone over-long sample runs alone, then one micro-batch of padding.
    assert _indices(plan_mini_batch([10, 4, 3, 3], 2, 10, layout)) == [[(0,)], [(1, 2, 3)]]
    assert _indices(plan_mini_batch([10, 4, 3, 3], 2, 8, layout)) == [[(0,), ()], [(1, 2), (3,)]]
    # Rank with fewer micro-batches re-balances to the common count: {4,4,4 | 6,3,3} at 6.
    plan = plan_mini_batch([4, 4, 4, 6, 3, 3], 2, 6, layout)
    assert plan.num_microbatches == 3
    assert _indices(plan) == [[(2,), (3,), (5,)], [(0,), (1,), (4,)]]


def test_split_to_common_count_by_hand():
    """The fallback when KK at the common count would break the budget: split the heaviest
    multi-sample micro-batch in two (KK of {3, 3, 2}: 3 | 3, then 2 joins the one of larger
    index at a tie -> {3 (1), 2} | {3 (0)}); empty ones only once every sample is alone."""
    padded = [3, 3, 2, 5]
    assert _split_to([[0, 1, 2], [3]], padded, 3) == [[3], [1, 2], [0]]
    assert _split_to([[0, 1, 2], [3]], padded, 4) == [[3], [0], [1], [2]]
    assert _split_to([[0, 1, 2], [3]], padded, 5) == [[3], [0], [1], [2], []]


def test_fewer_samples_than_ranks_or_microbatches_run_padding():
    """Every DP rank runs the common count: a rank short of samples gets empty micro-batches
    (after its real ones), and a mini-batch smaller than DP leaves whole ranks empty."""
    layout = packing_layout(1, 1)
    plan = plan_mini_batch([5, 1, 1, 1, 1, 1], 2, 5, layout)  # {5} | {1 x 5} in one of 5
    assert plan.num_microbatches == 1
    plan = plan_mini_batch([5, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2, 5, layout)
    counts = [sum(not mb.is_empty for mb in rank) for rank in plan.ranks]
    assert plan.num_microbatches == 2 and sorted(counts) == [2, 2]
    plan = plan_mini_batch([3], 3, 8, layout)
    assert [[mb.is_empty for mb in rank] for rank in plan.ranks] == [[False], [True], [True]]
    plan = plan_mini_batch([4, 4, 4], 2, 4, layout)  # {4, 4} | {4}: ranks 2 and 1 samples
    assert [len(rank) for rank in plan.ranks] == [2, 2]
    assert [mb.is_empty for rank in plan.ranks for mb in rank].count(True) == 1
    assert EMPTY_MICROBATCH.total_length == 0 and EMPTY_MICROBATCH.max_seqlen == 0


def _te_partitioned_indices(cu_seqlens_padded, world_size, rank):
    """A line-by-line port of TE's ``thd_partition_indices_kernel``
    (transformer_engine/common/fused_attn/thd_utils.cu), one thread per token."""
    cu_s = [c // world_size for c in cu_seqlens_padded]
    out = []
    for token_id in range(cu_seqlens_padded[-1] // world_size):
        seq_id = bisect.bisect_right(cu_s, token_id) - 1
        seq_len = cu_s[seq_id + 1] - cu_s[seq_id]
        index = token_id - cu_s[seq_id]
        offset = rank if index < seq_len // 2 else (world_size - 1) * 2 - rank
        out.append(index + cu_s[seq_id] * world_size + seq_len // 2 * offset)
    return out


def test_cp_indices_by_hand():
    # Samples of 4 and 8 at CP=2: chunks of 1 and 2; rank 0 keeps chunks 0 and 3 of each.
    assert cp_token_indices([4, 8], 2, 0).tolist() == [0, 3, 4, 5, 10, 11]
    assert cp_token_indices([4, 8], 2, 1).tolist() == [1, 2, 6, 7, 8, 9]
    assert _te_partitioned_indices([0, 4, 12], 2, 1) == [1, 2, 6, 7, 8, 9]
    assert cp_token_indices([5, 3], 1, 0).tolist() == list(range(8))
    with pytest.raises(ValueError, match="divide by 2 x CP"):
        cp_token_indices([6], 2, 0)


def test_stats_by_hand():
    stats = padded_stats([3, 5], 8)  # two rows of 8
    assert (stats.real_tokens, stats.computed_tokens, stats.real_token_fraction) == (8, 16, 0.5)
    assert (stats.real_attention, stats.computed_attention) == (34, 128)
    plan = plan_mini_batch([3, 5], 1, 16, PackingLayout(4, 8))  # 4 + 8 -> 16 with the round-up
    assert (plan_stats(plan).real_tokens, plan_stats(plan).computed_tokens) == (8, 16)


@settings(max_examples=200, deadline=None)
@given(
    costs=st.lists(st.integers(1, 10_000), min_size=1, max_size=60),
    k=st.integers(1, 8),
    equal=st.booleans(),
)
def test_kk_properties(costs, k, equal):
    if equal:
        costs = costs[: len(costs) // k * k]
    if len(costs) < k:
        return
    groups = balanced_partition(costs, k, equal_count=equal)
    assert sorted(i for g in groups for i in g) == list(range(len(costs)))
    assert all(groups) and len(groups) == k
    sums = [sum(costs[i] for i in g) for g in groups]
    assert max(sums) - min(sums) <= max(costs)  # a KK merge never widens the spread
    if equal:
        assert {len(g) for g in groups} == {len(costs) // k}
    assert groups == balanced_partition(list(costs), k, equal_count=equal)  # deterministic


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=48),
    dp=st.integers(1, 4),
    cp=st.sampled_from([1, 2, 4]),
    fp8=st.booleans(),
    budget=st.integers(16, 600),
)
def test_plan_properties(lengths, dp, cp, fp8, budget):
    layout = packing_layout(cp, layout_row_multiple(cp, 2, True, "mxfp8" if fp8 else None))
    try:
        plan = plan_mini_batch(lengths, dp, budget, layout)
    except ValueError as err:
        assert "below the layout's row multiple" in str(err)
        return
    assert len(plan.ranks) == dp
    assert {len(r) for r in plan.ranks} == {plan.num_microbatches}
    seen = sorted(i for r in plan.ranks for mb in r for i in mb.sample_indices)
    assert seen == list(range(len(lengths)))
    for rank in plan.ranks:
        empties = [mb.is_empty for mb in rank]
        assert empties == sorted(empties)  # real micro-batches first
        if any(empties):  # padding only where the rank's samples are each alone already
            assert all(len(mb.sample_indices) == 1 for mb in rank if not mb.is_empty)
        for mb in (mb for mb in rank if not mb.is_empty):
            assert mb.lengths == tuple(lengths[i] for i in mb.sample_indices)
            assert all(p % layout.sample_multiple == 0 for p in mb.padded_lengths)
            assert mb.total_length % layout.total_multiple == 0
            assert all(p >= n for p, n in zip(mb.padded_lengths, mb.lengths, strict=True))
            assert mb.total_length <= budget or len(mb.sample_indices) == 1
            cu, cu_pad = mb.cu_seqlens(), mb.cu_seqlens_padded()
            assert cu[-1] == mb.real_tokens and cu_pad[-1] == mb.total_length
            assert bool(((cu_pad[1:] - cu_pad[:-1]) >= (cu[1:] - cu[:-1])).all())
            assert mb.max_seqlen == int((cu_pad[1:] - cu_pad[:-1]).max())
    assert plan == plan_mini_batch(list(lengths), dp, budget, layout)  # deterministic


@settings(max_examples=100, deadline=None)
@given(
    chunks=st.lists(st.integers(1, 6), min_size=1, max_size=8),
    cp=st.sampled_from([2, 3, 4]),
)
def test_cp_indices_match_te_and_partition(chunks, cp):
    padded = [c * 2 * cp for c in chunks]
    cu = [0]
    for n in padded:
        cu.append(cu[-1] + n)
    per_rank = [cp_token_indices(padded, cp, r).tolist() for r in range(cp)]
    for r in range(cp):
        assert per_rank[r] == _te_partitioned_indices(cu, cp, r)
    assert sorted(i for idx in per_rank for i in idx) == list(range(cu[-1]))


def test_long_tail_real_token_fraction():
    """A long-CoT step: 1024 responses, lengths exponential (mean ~9.5k) capped at 20,480
    (mean about 8.4k, a spike at the cap), DP=8, CP=2, budget 32k per micro-batch."""
    gen = torch.Generator().manual_seed(0)
    lengths = (torch.empty(1024).exponential_(1 / 9500, generator=gen) + 256).long()
    lengths = lengths.clamp(max=20_480).tolist()
    multiple = layout_row_multiple(2, 1, False, None)
    plan = plan_mini_batch(lengths, 8, 32_768, packing_layout(2, multiple))
    packed, padded = plan_stats(plan), padded_stats(lengths, multiple)
    rank_tokens = [sum(mb.total_length for mb in rank) for rank in plan.ranks]
    print(
        f"\nmean {sum(lengths) / len(lengths):.0f} max {max(lengths)}; "
        f"real_token_fraction packed {packed.real_token_fraction:.4f} "
        f"padded {padded.real_token_fraction:.4f}; real_attention_fraction packed "
        f"{packed.real_attention_fraction:.4f} padded {padded.real_attention_fraction:.4f}; "
        f"micro-batches per rank {plan.num_microbatches}; rank tokens {min(rank_tokens)}.."
        f"{max(rank_tokens)}"
    )
    assert packed.real_token_fraction >= 0.9
    assert padded.real_token_fraction < 0.5
    assert max(rank_tokens) - min(rank_tokens) <= 20_480 + plan.num_microbatches * multiple


def test_attention_weight_of_qwen3_8b_by_hand():
    """Qwen3-8B: q 32 x 128 = 4096, kv 8 x 128 = 1024, hidden 4096, MLP 12288: linear weights
    per layer 4096 x (2 x 4096 + 2 x 1024) + 3 x 4096 x 12288 = 192,937,984."""
    from transformers import Qwen3Config

    config = Qwen3Config(
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=12288,
    )
    assert attention_weight(config) == 4096 / 192_937_984
