"""What one mini-batch of training computes, packed or padded, from its samples' lengths.

A sample of ``p`` prompt and ``r`` response tokens occupies ``len = p + r - 1`` positions
(next-token training: ``trainer/train_batch.row_length``). For a mini-batch of n samples over d
DP ranks:

Packed (``TrainingLayout.max_tokens_per_microbatch``, the trainer's ``trainer/packing.py``):
each sample is padded to ``sample_multiple`` (2 x CP), the samples are balanced over the DP
ranks by tokens (Karmarkar-Karp) and packed back to back into micro-batches of at most ``cap``
= the budget floored to ``row_multiple``, each rounded up to ``row_multiple``. In closed form:
    per DP rank     T = sum(padded) / d        (KK balances tokens to within one sample)
    micro-batches   m = ceil(T / cap)          (the packer's lower bound: it may need one more)
    computed        sum(padded) + d * m * (row_multiple - sample_multiple) / 2
                    (a micro-batch's round-up to row_multiple is half a unit on average)
    attention       sum(padded**2)             (within each sample, never across samples)
Padded (``packing=False``, ``train_batch.step_seq_len``): every sample a row of the longest,
rounded up to ``row_multiple``: computed n * row, attention n * row**2, micro-batches
ceil(n / d / b). ``tests/planning/test_batch_cost.py`` holds the closed form to the trainer's
own packer.

The workload gives a mean and a longest response, not a distribution: ``response_lengths``
assumes an exponential one clipped at the longest (long chains of thought: many short, a long
tail, the overlong cut at the cap). At the paper's 8192 mean and 20480 cap that puts 10.7% at
the cap and sum(len**2) at 1.64 x n * mean**2: attention costs more than at the mean length.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from megatron_fork.planning.layout import TrainingLayout


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class MiniBatchCost:
    """One mini-batch over all DP ranks."""

    real_tokens: int
    """Positions of the samples themselves."""
    computed_tokens: float
    """Positions the model runs over, padding included."""
    attention_pairs: float
    """Sum over samples of the computed length squared (causal attention ~ len**2 / 2)."""
    micro_batches: int
    """Per DP rank (every rank runs the same number)."""

    @property
    def real_token_fraction(self) -> float:
        return self.real_tokens / self.computed_tokens


def _exponential_mean(mean: int, longest: int) -> float:
    """The mean of an exponential whose values clipped at ``longest`` average ``mean``:
    E[min(Y, M)] = mu * (1 - exp(-M / mu)), increasing in mu (bisection)."""
    lo, hi = float(mean), longest**2 / (2 * (longest - mean)) + mean  # f(hi) >= mean
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid * (1 - math.exp(-longest / mid)) < mean else (lo, mid)
    return (lo + hi) / 2


def response_lengths(mean: int, longest: int, count: int) -> list[int]:
    """``count`` response lengths averaging about ``mean``, none above ``longest``: the
    mid-point quantiles of an exponential distribution clipped at ``longest`` (all ``mean``
    when ``longest == mean``)."""
    if not 1 <= mean <= longest:
        raise ValueError(f"need 1 <= mean ({mean}) <= longest ({longest}) response tokens")
    if mean == longest:
        return [mean] * count
    mu = _exponential_mean(mean, longest)
    quantiles = (-mu * math.log(1 - (i + 0.5) / count) for i in range(count))
    return [min(longest, max(1, round(y))) for y in quantiles]


def packed_cost(
    lengths: Sequence[int],
    data_parallel: int,
    max_tokens_per_microbatch: int,
    row_multiple: int,
    sample_multiple: int,
) -> MiniBatchCost:
    """The packed cost of one mini-batch of samples of ``lengths`` positions (module docstring).
    Refuses a sample longer than the budget (the trainer would run it alone, unplanned)."""
    cap = max_tokens_per_microbatch // row_multiple * row_multiple
    padded = [_round_up(n, sample_multiple) for n in lengths]
    if max(padded) > cap:
        raise ValueError(
            f"a {max(lengths)}-position sample (padded to {max(padded)}) exceeds "
            f"max_tokens_per_microbatch={max_tokens_per_microbatch} (usable {cap}, a multiple "
            f"of {row_multiple}): raise it to at least {_round_up(max(padded), row_multiple)}"
        )
    micro_batches = max(1, math.ceil(sum(padded) / data_parallel / cap))
    tail = data_parallel * micro_batches * (row_multiple - sample_multiple) / 2
    return MiniBatchCost(
        real_tokens=sum(lengths),
        computed_tokens=sum(padded) + tail,
        attention_pairs=sum(n * n for n in padded),
        micro_batches=micro_batches,
    )


def padded_cost(
    lengths: Sequence[int], data_parallel: int, micro_batch_size: int, row_multiple: int
) -> MiniBatchCost:
    """The cost of one mini-batch as rows of the longest sample (module docstring)."""
    row = _round_up(max(lengths), row_multiple)
    return MiniBatchCost(
        real_tokens=sum(lengths),
        computed_tokens=len(lengths) * row,
        attention_pairs=len(lengths) * row * row,
        micro_batches=math.ceil(len(lengths) / data_parallel / micro_batch_size),
    )


def mini_batch_cost(layout: TrainingLayout, lengths: Sequence[int]) -> MiniBatchCost:
    """Packed when the layout packs (``max_tokens_per_microbatch``), else padded rows."""
    if layout.packing:
        return packed_cost(
            lengths,
            layout.data_parallel,
            layout.max_tokens_per_microbatch,
            layout.row_multiple,
            layout.sample_multiple,
        )
    return padded_cost(lengths, layout.data_parallel, layout.micro_batch_size, layout.row_multiple)
