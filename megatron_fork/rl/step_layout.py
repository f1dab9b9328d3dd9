"""Which DP rank trains which samples of an RL step, in which mini-batch and micro-batch.

Decided once per step on rank 0, which holds every sample, and sent with each DP rank's
samples (``rollout_scatter``): the ranks never need each other's lengths. Mini-batch ``m`` is
the ``m``-th contiguous slice of the step's samples, as before packing, so each optimizer step
sees the same samples whichever layout trains them.

- ``padded_step_layout``: DP rank ``d`` takes the ``d``-th slice of each mini-batch, in
  micro-batches of ``micro_batch_size`` rows (filler samples included: they keep the shape).
- ``packed_step_layout``: each mini-batch's trainable samples are balanced over the DP ranks by
  tokens and packed into token-budget micro-batches (``packing.plan_mini_batch``); filler
  samples and empty responses (no valid token) are left out: they would cost compute and
  carry no gradient. A mini-batch without trainable samples has no micro-batches.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from megatron_fork.rl.rl_config import RLConfig
from megatron_fork.trainer.packing import (
    PackingLayout,
    overlong_samples,
    packing_layout,
    plan_mini_batch,
    plan_stats,
    round_up,
)


@dataclass(frozen=True)
class StepLayout:
    """``microbatches[d][m][j]``: the step indices of DP rank ``d``'s ``j``-th micro-batch in
    mini-batch ``m``. Every rank has the same number of micro-batches in a mini-batch
    (Megatron's schedule takes one ``num_microbatches``); a micro-batch may be empty (a rank
    short of samples runs padding)."""

    microbatches: tuple[tuple[tuple[tuple[int, ...], ...], ...], ...]
    trained: tuple[bool, ...]
    """Per mini-batch: whether any of its samples, on any rank, is trainable. A mini-batch of
    filler samples only takes no optimizer step (Adam's momentum would still move weights)."""
    overlong_samples: int = 0
    """Samples longer than the micro-batch budget, each trained alone."""
    real_tokens: int = 0
    """Positions of the trained samples (trainable, in trained mini-batches)."""
    computed_tokens: int = 0
    """Positions the model computes over every micro-batch of every rank, padding included."""

    def __post_init__(self):
        counts = {len(rank) for rank in self.microbatches}
        if len(counts) != 1 or counts != {len(self.trained)}:
            raise ValueError("every DP rank needs one entry per mini-batch")
        for m in range(len(self.trained)):
            if len({len(rank[m]) for rank in self.microbatches}) != 1:
                raise ValueError(f"DP ranks run different micro-batch counts in mini-batch {m}")

    @property
    def dp_size(self) -> int:
        return len(self.microbatches)

    @property
    def num_mini_batches(self) -> int:
        return len(self.trained)

    def assignment(self, dp_rank: int) -> list[int]:
        """Rank ``dp_rank``'s samples, in micro-batch order."""
        return [i for mini in self.microbatches[dp_rank] for micro in mini for i in micro]

    def placement(self, dp_rank: int) -> list[tuple[int, int]]:
        """(mini-batch, micro-batch) of each of ``assignment(dp_rank)``'s samples."""
        return [
            (m, j)
            for m, mini in enumerate(self.microbatches[dp_rank])
            for j, micro in enumerate(mini)
            for _ in micro
        ]

    def microbatch_counts(self) -> list[int]:
        """Micro-batches per rank in each mini-batch."""
        return [len(mini) for mini in self.microbatches[0]]

    @classmethod
    def one_microbatch(cls, assignment: Sequence[Sequence[int]]) -> "StepLayout":
        """One mini-batch, one micro-batch per DP rank holding ``assignment[d]`` (tests, and
        transfers that do not train)."""
        return cls(tuple(((tuple(a),),) for a in assignment), (True,))


def _mini_batch_ranges(num_samples: int, num_mini_batches: int) -> list[range]:
    if num_samples % num_mini_batches:
        raise ValueError(
            f"{num_samples} samples do not split into {num_mini_batches} equal mini-batches"
        )
    per = num_samples // num_mini_batches
    return [range(m * per, (m + 1) * per) for m in range(num_mini_batches)]


def layout_metrics(layout: StepLayout) -> dict:
    """The step's packing figures for the log."""
    return {
        "train/real_token_fraction": layout.real_tokens / max(layout.computed_tokens, 1),
        "train/overlong_samples": float(layout.overlong_samples),
    }


def padded_step_layout(
    positions: Sequence[int],
    trainable: Sequence[bool],
    num_mini_batches: int,
    dp_size: int,
    micro_batch_size: int,
    row_length: int,
) -> StepLayout:
    """The layout of padded rows (``packing=False``): contiguous DP slices of each mini-batch,
    whole micro-batches of ``micro_batch_size`` rows of ``row_length`` positions
    (``train_batch.check_batch_layout``)."""
    ranks = [[] for _ in range(dp_size)]
    trained, real, computed = [], 0, 0
    for span in _mini_batch_ranges(len(trainable), num_mini_batches):
        rows = len(span) // dp_size
        for d in range(dp_size):
            mine = list(span[d * rows : (d + 1) * rows])
            micro = [
                tuple(mine[i : i + micro_batch_size]) for i in range(0, rows, micro_batch_size)
            ]
            ranks[d].append(tuple(micro))
        trained.append(any(trainable[i] for i in span))
        if trained[-1]:
            real += sum(positions[i] for i in span if trainable[i])
            computed += len(span) * row_length
    return StepLayout(tuple(tuple(r) for r in ranks), tuple(trained), 0, real, computed)


def packed_step_layout(
    positions: Sequence[int],
    trainable: Sequence[bool],
    num_mini_batches: int,
    dp_size: int,
    max_tokens_per_microbatch: int,
    layout: PackingLayout,
    attention_weight: float = 0.0,
) -> StepLayout:
    """The packed layout of a step whose sample ``i`` occupies ``positions[i]`` next-token
    positions (prompt + response - 1): per mini-batch, ``plan_mini_batch`` over its trainable
    samples with at least one position; ``attention_weight`` adds attention's quadratic cost
    to the DP balance (``packing.sample_costs``)."""
    ranks = [[] for _ in range(dp_size)]
    trained, overlong, real, computed = [], 0, 0, 0
    for span in _mini_batch_ranges(len(trainable), num_mini_batches):
        chosen = [i for i in span if trainable[i] and positions[i] >= 1]
        trained.append(bool(chosen))
        if not chosen:
            for rank in ranks:
                rank.append(())
            continue
        lengths = [positions[i] for i in chosen]
        plan = plan_mini_batch(
            lengths, dp_size, max_tokens_per_microbatch, layout, attention_weight
        )
        overlong += overlong_samples(plan, max_tokens_per_microbatch)
        stats = plan_stats(plan)
        empties = sum(mb.is_empty for rank in plan.ranks for mb in rank)
        real += stats.real_tokens
        computed += stats.computed_tokens + empties * layout.total_multiple
        for rank, planned in zip(ranks, plan.ranks, strict=True):
            rank.append(tuple(tuple(chosen[k] for k in mb.sample_indices) for mb in planned))
    return StepLayout(tuple(tuple(r) for r in ranks), tuple(trained), overlong, real, computed)


def rl_step_layout(
    config: RLConfig,
    samples,
    trainable: Sequence[bool],
    dp_size: int,
    multiple: int,
    attention_weight: float = 0.0,
) -> StepLayout:
    """Rank 0: the layout of an RL step's ``samples`` under ``config`` (packed or padded),
    with rows / slots padded to ``multiple`` (``train_batch.row_multiple``). A sample without
    a prompt token is refused here, on rank 0, so the error reaches every rank."""
    empty = next((s.request_id for s in samples if not s.prompt_ids), None)
    if empty is not None:
        raise ValueError(f"sample {empty!r} has no prompt token: nothing predicts its first")
    positions = [len(s.prompt_ids) + len(s.output_ids) - 1 for s in samples]
    if not config.packing:
        row = round_up(max(positions), multiple)  # train_batch.row_length of the longest
        return padded_step_layout(
            positions,
            trainable,
            config.mini_batches_per_step,
            dp_size,
            config.micro_batch_size,
            row,
        )
    return packed_step_layout(
        positions,
        trainable,
        config.mini_batches_per_step,
        dp_size,
        config.max_tokens_per_microbatch,
        packing_layout(config.parallel.context_parallel, multiple),
        attention_weight,
    )
