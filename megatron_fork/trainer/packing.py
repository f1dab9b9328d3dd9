"""Plans packed (THD) micro-batches for one mini-batch: which DP rank trains which samples,
how each rank's samples group into token-budget micro-batches, how each packed sequence is
padded, and which tokens each CP rank keeps. Pure planning (no Megatron, no process groups):
rank 0 plans each step (``step_layout``) and sends every DP rank its part with its samples
(``rollout_scatter``), so the ranks never need each other's lengths.

Lengths are positions in the packed sequence: for next-token training a sample of ``p`` prompt
and ``r`` response tokens occupies ``p + r - 1`` positions (``train_batch.row_length``).

For the model, pass the PADDED boundaries as every ``cu_seqlens`` field of ``PackedSeqParams``
(``cu_seqlens_q = cu_seqlens_kv = cu_seqlens_q_padded = cu_seqlens_kv_padded =
cu_seqlens_padded()``), as verl and newer Megatron-LM do: TE 2.11 decides whether sequences are
padded from ``cu_seqlens_padded[:-1]`` against ``cu_seqlens[:-1]`` alone
(dot_product_attention.py:1299-1309), so padding that only the last sample carries would be
taken for none, and its CP path would then split real lengths wrongly (context_parallel.py
:676-744). Padding sits at the end of each slot and attention is causal, so real tokens see
the same keys either way; ``cu_seqlens()`` (real) is for the loss's masks only.
"""

import dataclasses
import heapq
import math
from collections.abc import Sequence

import torch


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class PackingLayout:
    """What a packed micro-batch's lengths must divide by at a parallel layout."""

    sample_multiple: int
    """Each sample's padded length: 2 x CP with context parallelism (TE's THD CP splits every
    sequence into 2 x CP equal chunks and asserts ``seqlen % (2 * cp) == 0``), else 1."""
    total_multiple: int
    """The whole packed length: ``train_batch.layout_row_multiple`` (8, 2 x CP, TP x CP with
    sequence parallelism, FP8 GEMM rows). A multiple of ``sample_multiple``."""

    def __post_init__(self):
        if self.sample_multiple < 1 or self.total_multiple % self.sample_multiple:
            raise ValueError(
                f"total_multiple {self.total_multiple} must be a multiple of sample_multiple "
                f"{self.sample_multiple} >= 1 (pass train_batch.layout_row_multiple)"
            )


def packing_layout(context_parallel: int, row_multiple: int) -> PackingLayout:
    """The layout for ``context_parallel`` ranks and ``layout_row_multiple``'s result."""
    sample = 2 * context_parallel if context_parallel > 1 else 1
    return PackingLayout(sample, math.lcm(row_multiple, sample))


@dataclasses.dataclass(frozen=True)
class PackedMicroBatch:
    """One packed sequence: samples back to back, each padded at its end. The padding that
    rounds the total up to ``total_multiple`` is added to the last sample (so
    ``cu_seqlens_padded[-1]`` is the tensor's length, as TE's CP index kernel expects)."""

    sample_indices: tuple[int, ...]
    """Indices into the mini-batch's samples, in packing order."""
    lengths: tuple[int, ...]
    """Real positions of each sample."""
    padded_lengths: tuple[int, ...]
    """Positions each sample occupies, real + padding."""

    @property
    def total_length(self) -> int:
        """Length of the packed tensor (computed tokens)."""
        return sum(self.padded_lengths)

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def max_seqlen(self) -> int:
        """Longest padded sample: what ``PackedSeqParams.max_seqlen_q/kv`` take (the rotary
        table and TE's kernels index the padded layout, as Megatron's multimodal CP path)."""
        return max(self.padded_lengths, default=0)

    @property
    def is_empty(self) -> bool:
        """No sample: a DP rank with fewer samples than the step's micro-batch count runs
        padding alone (``EMPTY_MICROBATCH``) so that every rank runs the same schedule."""
        return not self.sample_indices

    def cu_seqlens(self) -> torch.Tensor:
        """(n + 1,) int32 starts of the real tokens' extents: ``PackedSeqParams.cu_seqlens_q``."""
        return _cumulative(self.lengths)

    def cu_seqlens_padded(self) -> torch.Tensor:
        """(n + 1,) int32 sample offsets in the packed tensor: ``cu_seqlens_q_padded``."""
        return _cumulative(self.padded_lengths)


EMPTY_MICROBATCH = PackedMicroBatch((), (), ())
"""A micro-batch without samples (see ``PackedMicroBatch.is_empty``)."""


def _cumulative(lengths: Sequence[int]) -> torch.Tensor:
    out = torch.zeros(len(lengths) + 1, dtype=torch.int32)  # (n + 1,)
    out[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    return out


def pack_microbatch(
    indices: Sequence[int], lengths: Sequence[int], layout: PackingLayout
) -> PackedMicroBatch:
    """Samples ``indices`` (of the mini-batch's ``lengths``) as one packed sequence: each
    padded to ``layout.sample_multiple``, the last one further so the total divides by
    ``layout.total_multiple``."""
    if not indices:
        raise ValueError("a packed micro-batch needs at least one sample")
    real = tuple(lengths[i] for i in indices)
    if min(real) < 1:
        raise ValueError(f"sample lengths must be >= 1, got {real}")
    padded = [round_up(n, layout.sample_multiple) for n in real]
    padded[-1] += round_up(sum(padded), layout.total_multiple) - sum(padded)
    return PackedMicroBatch(tuple(indices), real, tuple(padded))


def sample_costs(lengths: Sequence[int], attention_weight: float = 0.0) -> list[float]:
    """Compute cost of each sample for balancing: ``len + attention_weight * len**2``. With 0
    (the default, as verl) ranks get equal token counts: the linear layers' FLOPs, activation
    memory and the micro-batch count all follow tokens. A positive weight adds causal
    attention's quadratic term: per layer ``2 * q_width * len**2`` FLOPs against
    ``2 * linear_params * len``, so ``attention_weight = q_width / linear_params`` (Qwen3-8B:
    4096 / 193M ~ 2.1e-5: a 20k-token sample adds ~0.43x its linear FLOPs; 1 / (12 * hidden)
    for a dense MHA with a 4x MLP)."""
    return [n + attention_weight * n * n for n in lengths]


def attention_weight(hf_config) -> float:
    """``sample_costs``' attention weight of a Qwen3-style model: the query width over the
    linear parameters of one layer (q, k, v, o projections and the SwiGLU MLP)."""
    head_dim = getattr(hf_config, "head_dim", None) or (
        hf_config.hidden_size // hf_config.num_attention_heads
    )
    q_width = hf_config.num_attention_heads * head_dim
    kv_width = hf_config.num_key_value_heads * head_dim
    hidden = hf_config.hidden_size
    linear = hidden * (2 * q_width + 2 * kv_width) + 3 * hidden * hf_config.intermediate_size
    return q_width / linear


def balanced_partition(
    costs: Sequence[float], k: int, equal_count: bool = False
) -> list[list[int]]:
    """Indices of ``costs`` in ``k`` groups of near-equal cost sums: Karmarkar-Karp largest
    differencing (as verl's ``get_seqlen_balanced_partitions``). Each item starts as a k-way
    state (one non-empty set); the two states of largest spread are merged, largest set with
    smallest, until one is left. A merge's spread is at most the larger input spread, so the
    result's max - min sum is at most the largest cost. ``equal_count`` starts from states of k
    consecutive sorted items, giving every group ``len(costs) / k`` items. Deterministic: ties
    break by item index. Groups come out in decreasing sum, each sorted by index."""
    n = len(costs)
    if k < 1 or n < k or (equal_count and n % k):
        raise ValueError(f"cannot split {n} items into {k} non-empty groups (equal={equal_count})")
    order = sorted(range(n), key=lambda i: (costs[i], i))
    chunk = k if equal_count else 1
    heap = []
    for seq, start in enumerate(range(0, n, chunk)):
        sets = [(costs[i], [i]) for i in order[start : start + chunk]]
        sets += [(0.0, []) for _ in range(k - len(sets))]
        heapq.heappush(heap, _kk_entry(sets, seq))
    seq = len(heap)
    while len(heap) > 1:
        a, b = heapq.heappop(heap)[-1], heapq.heappop(heap)[-1]
        merged = [(sa + sb, ia + ib) for (sa, ia), (sb, ib) in zip(a, reversed(b), strict=True)]
        heapq.heappush(heap, _kk_entry(merged, seq))
        seq += 1
    return [sorted(items) for _, items in heap[0][-1]]


def _kk_entry(sets, seq):
    """Heap entry of a KK state: largest spread first, then largest top set, then oldest."""
    sets = sorted(sets, key=lambda s: (-s[0], s[1]))
    return (-(sets[0][0] - sets[-1][0]), -sets[0][0], seq, sets)


def _fits(group: Sequence[int], padded: Sequence[int], capacity: int) -> bool:
    """A micro-batch fits the budget, or is one sample alone (an over-long sample is trained
    alone rather than refused: the planner must size the budget to the longest response)."""
    return len(group) == 1 or sum(padded[i] for i in group) <= capacity


def _first_fit_decreasing(items: Sequence[int], padded: Sequence[int], capacity: int):
    """Bins by first-fit decreasing: always fits, not always balanced."""
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(items, key=lambda i: (-padded[i], i)):
        slot = next((b for b, load in enumerate(loads) if load + padded[i] <= capacity), None)
        if slot is None:
            bins.append([]), loads.append(0)
            slot = len(bins) - 1
        bins[slot].append(i)
        loads[slot] += padded[i]
    return [sorted(b) for b in bins]


def _kk_bins(items: Sequence[int], padded: Sequence[int], capacity: int, count: int):
    """``items`` in ``count`` KK-balanced micro-batches, or None if one would not fit."""
    if count > len(items):
        return None
    groups = balanced_partition([padded[i] for i in items], count)
    bins = [[items[j] for j in g] for g in groups]
    return bins if all(_fits(b, padded, capacity) for b in bins) else None


def _fewest_bins(items: Sequence[int], padded: Sequence[int], capacity: int):
    """The fewest micro-batches found: KK-balanced counts from the token lower bound up, else
    first-fit decreasing (which sets the upper bound)."""
    ffd = _first_fit_decreasing(items, padded, capacity)
    lower = max(1, math.ceil(sum(padded[i] for i in items) / capacity))
    for count in range(lower, len(ffd)):
        bins = _kk_bins(items, padded, capacity, count)
        if bins is not None:
            return bins
    return ffd


def _split_to(bins: list[list[int]], padded: Sequence[int], count: int):
    """Split the heaviest multi-sample micro-batch in two (KK) until there are ``count``:
    splitting never breaks the budget. A rank with fewer samples than ``count`` ends with
    empty micro-batches (padding only, no loss)."""
    bins = [list(b) for b in bins]
    while len(bins) < count:
        splittable = [b for b in bins if len(b) > 1]
        if not splittable:
            return bins + [[] for _ in range(count - len(bins))]
        heavy = max(splittable, key=lambda b: (sum(padded[i] for i in b), -b[0]))
        bins.remove(heavy)
        halves = balanced_partition([padded[i] for i in heavy], 2)
        bins += [[heavy[j] for j in h] for h in halves]
    return bins


@dataclasses.dataclass(frozen=True)
class MiniBatchPlan:
    """A mini-batch's packed micro-batches, per DP rank: ``ranks[d][j]`` is DP rank ``d``'s
    ``j``-th micro-batch; every rank has the same number (Megatron's schedule takes one
    ``num_microbatches``)."""

    ranks: tuple[tuple[PackedMicroBatch, ...], ...]

    @property
    def num_microbatches(self) -> int:
        return len(self.ranks[0])


def plan_mini_batch(
    lengths: Sequence[int],
    dp_size: int,
    max_tokens_per_microbatch: int,
    layout: PackingLayout,
    attention_weight: float = 0.0,
) -> MiniBatchPlan:
    """Plan one mini-batch (``lengths``: positions per sample, all of it). Samples go to DP
    ranks by KK on ``sample_costs`` of their padded lengths; each rank's samples go into the
    fewest micro-batches whose packed length is at most ``max_tokens_per_microbatch`` (all CP
    ranks together: each CP rank holds 1 / CP of it), KK-balanced where that fits; ranks with
    fewer micro-batches than the most split theirs, or run padding alone once every sample is
    alone. Real micro-batches are ordered by their first sample index, padding ones last."""
    cap = max_tokens_per_microbatch // layout.total_multiple * layout.total_multiple
    if cap < 1:
        raise ValueError(
            f"max_tokens_per_microbatch {max_tokens_per_microbatch} is below the layout's "
            f"row multiple {layout.total_multiple}"
        )
    if not lengths:
        raise ValueError("a mini-batch to plan needs at least one sample")
    padded = [round_up(n, layout.sample_multiple) for n in lengths]
    costs = sample_costs(padded, attention_weight)
    if len(lengths) >= dp_size:
        ranks = balanced_partition(costs, dp_size)
    else:  # fewer samples than ranks: one each, the other ranks run padding only
        ranks = [[i] for i in range(len(lengths))] + [[] for _ in range(dp_size - len(lengths))]
    fewest = [_fewest_bins(items, padded, cap) if items else [] for items in ranks]
    count = max(len(b) for b in fewest)
    plan = []
    for items, bins in zip(ranks, fewest, strict=True):
        if len(bins) < count:
            bins = _kk_bins(items, padded, cap, count) or _split_to(bins, padded, count)
        bins = sorted(sorted(b) for b in bins if b) + [[] for b in bins if not b]
        plan.append(
            tuple(pack_microbatch(b, lengths, layout) if b else EMPTY_MICROBATCH for b in bins)
        )
    return MiniBatchPlan(tuple(plan))


def overlong_samples(plan: MiniBatchPlan, max_tokens_per_microbatch: int) -> int:
    """Samples packed alone because their padded length exceeds the budget."""
    return sum(
        1 for rank in plan.ranks for mb in rank if mb.total_length > max_tokens_per_microbatch
    )


def cp_token_indices(padded_lengths: Sequence[int], cp_size: int, cp_rank: int) -> torch.Tensor:
    """(total / cp_size,) int64 positions of the packed sequence that CP rank ``cp_rank``
    keeps, in TE's THD load-balanced order (``thd_get_partitioned_indices``): each sample cut
    into 2 x CP equal chunks, rank r keeps chunks r then 2 x CP - 1 - r of every sample, samples
    in order."""
    if cp_size == 1:
        return torch.arange(sum(padded_lengths))
    parts, start = [], 0
    for n in padded_lengths:
        if n % (2 * cp_size):
            raise ValueError(f"padded sample length {n} must divide by 2 x CP = {2 * cp_size}")
        chunk = n // (2 * cp_size)
        for c in (cp_rank, 2 * cp_size - 1 - cp_rank):
            parts.append(torch.arange(start + c * chunk, start + (c + 1) * chunk))
        start += n
    return torch.cat(parts)


@dataclasses.dataclass(frozen=True)
class PackingStats:
    """Real against computed tokens (and attention pairs, causal within a sample, ~ len**2)."""

    real_tokens: int
    computed_tokens: int
    real_attention: int
    computed_attention: int

    @property
    def real_token_fraction(self) -> float:
        return self.real_tokens / self.computed_tokens

    @property
    def real_attention_fraction(self) -> float:
        return self.real_attention / self.computed_attention


def plan_stats(plan: MiniBatchPlan) -> PackingStats:
    """Statistics of a packed plan: computed = every packed tensor's length."""
    mbs = [mb for rank in plan.ranks for mb in rank]
    return PackingStats(
        real_tokens=sum(mb.real_tokens for mb in mbs),
        computed_tokens=sum(mb.total_length for mb in mbs),
        real_attention=sum(n * n for mb in mbs for n in mb.lengths),
        computed_attention=sum(n * n for mb in mbs for n in mb.padded_lengths),
    )


def padded_stats(lengths: Sequence[int], multiple: int) -> PackingStats:
    """Statistics of today's layout: every sample a row of the longest, rounded up to
    ``multiple`` (``train_batch.step_seq_len``)."""
    row = round_up(max(lengths), multiple)
    return PackingStats(
        real_tokens=sum(lengths),
        computed_tokens=len(lengths) * row,
        real_attention=sum(n * n for n in lengths),
        computed_attention=len(lengths) * row * row,
    )
