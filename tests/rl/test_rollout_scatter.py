"""Rank 0's rollout -> each DP rank's slice as tensors: every rank of DP index d gets exactly
the samples the assignment gives d (checked against a plain-Python reference built from the
same samples), receives no other rank's bytes, and sees rank 0's errors."""

import random

import pytest
import torch
import torch.distributed as dist

from megatron_fork.rl.rollout_scatter import (
    HEADER,
    RolloutToScatter,
    ScatterGroups,
    scatter_rollout,
)
from megatron_fork.rl.step_layout import StepLayout
from megatron_fork.rollout.types import FinishReason, Sample
from tests.support.distributed import run_distributed
from tests.support.megatron_setup import init_megatron

VOCAB = 151_936  # Qwen3: ids above int16 and 2**16


def _step(num_samples: int, seed: int) -> RolloutToScatter:
    """The same synthetic step on every rank: varied lengths, a zero-length response, an empty
    prompt, large ids; a DP rank with no samples when the step is small."""
    rng = random.Random(seed)
    samples = []
    for i in range(num_samples):
        prompt = tuple(rng.randrange(VOCAB) for _ in range(0 if i == 1 else rng.randrange(1, 9)))
        output = tuple(rng.randrange(VOCAB) for _ in range(0 if i == 0 else rng.randrange(1, 13)))
        logprobs = tuple(-rng.random() * 5 for _ in output)  # Python doubles, as the engine
        samples.append(Sample(f"r{i}", prompt, output, logprobs, FinishReason("stop"), 3))
    advantages = torch.randn(num_samples, generator=torch.Generator().manual_seed(seed))
    trainable = [rng.random() < 0.7 for _ in range(num_samples)]
    order = list(range(num_samples))
    rng.shuffle(order)  # not contiguous: a packer's assignment
    return RolloutToScatter(samples, advantages, trainable, StepLayout.one_microbatch([order]))


def _assign(step: RolloutToScatter, dp_size: int) -> RolloutToScatter:
    """DP rank d takes every dp_size-th of the shuffled samples, in 2 mini-batches of 2
    micro-batches each (some empty when the step is small), the last sample left out."""
    shuffled = step.layout.assignment(0)[:-1]
    ranks = []
    for d in range(dp_size):
        mine = shuffled[d::dp_size]
        half, quarter = len(mine) // 2, len(mine) // 4
        minis = (mine[:half], mine[half:])
        ranks.append(tuple((tuple(x[:quarter]), tuple(x[quarter:])) for x in minis))
    layout = StepLayout(tuple(ranks), (True, False))
    return RolloutToScatter(step.samples, step.advantages, step.trainable, layout)


def _check_slice(got, step: RolloutToScatter, dp_rank: int) -> None:
    """``got`` against rank 0's samples of ``dp_rank``, rebuilt in plain Python."""
    indices = step.layout.assignment(dp_rank)
    chosen = [step.samples[i] for i in indices]
    assert got.sample_indices.tolist() == indices
    assert got.prompt_lengths.tolist() == [len(s.prompt_ids) for s in chosen]
    assert got.response_lengths.tolist() == [len(s.output_ids) for s in chosen]
    assert got.token_ids.tolist() == [t for s in chosen for t in s.prompt_ids + s.output_ids]
    assert got.token_ids.dtype == torch.int64
    expected_lp = torch.tensor([x for s in chosen for x in s.output_logprobs], dtype=torch.float32)
    assert torch.equal(got.rollout_logprobs, expected_lp)
    assert torch.equal(got.advantages, step.advantages[indices].float())
    assert got.trainable.tolist() == [step.trainable[i] for i in indices]
    offsets = got.token_offsets.tolist()
    for k, s in enumerate(chosen):
        assert got.token_ids[offsets[k] : offsets[k + 1]].tolist() == list(
            s.prompt_ids + s.output_ids
        )
    assert got.step_samples == len(step.samples)
    assert got.step_max_tokens == max(len(s.prompt_ids) + len(s.output_ids) for s in step.samples)
    assert got.trained == list(step.layout.trained)
    assert got.microbatch_counts == step.layout.microbatch_counts()
    members = [[[indices[k] for k in micro] for micro in mini] for mini in got.microbatch_members()]
    assert members == [
        [list(micro) for micro in mini] for mini in step.layout.microbatches[dp_rank]
    ]


class _ReceivedBytes:
    """Counts the bytes this rank receives through recv and broadcast (not the ones it roots)."""

    def __init__(self):
        self.total = 0
        self.originals = (dist.recv, dist.broadcast)

    def __enter__(self):
        recv, broadcast = self.originals

        def counted_recv(tensor, *args, **kwargs):
            self.total += tensor.numel() * tensor.element_size()
            return recv(tensor, *args, **kwargs)

        def counted_broadcast(tensor, *args, group=None, group_src=None, **kwargs):
            if dist.get_rank(group) != group_src:
                self.total += tensor.numel() * tensor.element_size()
            return broadcast(tensor, *args, group=group, group_src=group_src, **kwargs)

        dist.recv, dist.broadcast = counted_recv, counted_broadcast
        return self

    def __exit__(self, *exc):
        dist.recv, dist.broadcast = self.originals


def _slice_bytes(step: RolloutToScatter, indices: list[int]) -> int:
    chosen = [step.samples[i] for i in indices]
    tokens = sum(len(s.prompt_ids) + len(s.output_ids) for s in chosen)
    responses = sum(len(s.output_ids) for s in chosen)
    meta, schedule = 8 * 6 * len(chosen), 8 * 2 * step.layout.num_mini_batches
    return 8 * len(HEADER) + meta + schedule + 4 * tokens + 4 * (responses + len(chosen))


def _round_trip_worker(rank, world_size, tp, pp, cp, num_samples):
    from megatron.core import parallel_state as ps

    init_megatron(tp=tp, pp=pp, cp=cp)
    dp_size, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    groups = ScatterGroups.from_parallel_state()
    for seed in (1, 2):  # twice: the second message must not be out of step with the first
        step = _assign(_step(num_samples, seed), dp_size)
        with _ReceivedBytes() as received:
            got = scatter_rollout(lambda step=step: step, groups, torch.device("cpu"))
        _check_slice(got, step, dp_rank)
        expected = 0 if rank == 0 else _slice_bytes(step, step.layout.assignment(dp_rank))
        assert received.total == expected, (rank, received.total, expected)


@pytest.mark.parametrize(
    ("world_size", "tp", "pp", "cp", "num_samples"),
    [(2, 1, 1, 1, 13), (4, 2, 1, 1, 11), (4, 1, 1, 2, 9), (4, 1, 2, 1, 1)],
    ids=["dp2", "dp2xtp2", "dp2xcp2", "dp2xpp2-one-sample"],
)
def test_every_rank_gets_exactly_its_dp_slice(world_size, tp, pp, cp, num_samples):
    run_distributed(_round_trip_worker, world_size, tp, pp, cp, num_samples, timeout=120)


def _error_worker(rank, world_size, tp):
    from megatron.core import parallel_state as ps

    init_megatron(tp=tp)
    groups = ScatterGroups.from_parallel_state()
    cpu = torch.device("cpu")

    def fails():
        raise ValueError("engine went away")

    bad = _step(4, 3)
    bad.samples[2] = Sample("bad", (1,), (2, 3), (-1.0,), FinishReason("length"), 0)
    for work, kind, text in [
        (fails, ValueError, "engine went away"),
        (lambda: _assign(bad, 2), ValueError, "1 log-probs for 2 generated"),
        (lambda: bad, ValueError, "the layout has 1 DP ranks for DP size 2"),
    ]:
        expected = kind if rank == 0 else RuntimeError
        with pytest.raises(expected, match=text):
            scatter_rollout(work, groups, cpu)
    step = _assign(_step(6, 4), 2)  # still in step after the errors
    _check_slice(scatter_rollout(lambda: step, groups, cpu), step, ps.get_data_parallel_rank())


def test_rank0_errors_reach_every_rank():
    run_distributed(_error_worker, 4, 2, timeout=120)


def test_single_process_and_empty_step():
    step = _assign(_step(5, 7), 1)
    _check_slice(scatter_rollout(lambda: step, ScatterGroups(), "cpu"), step, 0)
    empty = RolloutToScatter([], torch.zeros(0), [], StepLayout.one_microbatch([[]]))
    got = scatter_rollout(lambda: empty, ScatterGroups(), "cpu")
    assert got.token_ids.numel() == got.advantages.numel() == 0 and got.step_max_tokens == 0
    assert got.token_offsets.tolist() == [0]
    for bad_id in (2**31, -1):  # ids travel as int32
        samples = list(step.samples)
        samples[3] = Sample("big", (5,), (bad_id,), (-1.0,), FinishReason("stop"), 0)
        bad = RolloutToScatter(samples, step.advantages, step.trainable, step.layout)
        with pytest.raises(ValueError, match="token ids must lie in"):
            scatter_rollout(lambda bad=bad: bad, ScatterGroups(), "cpu")
    twice_layout = StepLayout.one_microbatch([[0, 0, 1, 2, 3]])
    twice = RolloutToScatter(step.samples, step.advantages, step.trainable, twice_layout)
    with pytest.raises(ValueError, match="at most once"):
        scatter_rollout(lambda: twice, ScatterGroups(), "cpu")
