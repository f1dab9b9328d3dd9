"""Rank 0's rollout -> each DP rank's slice as tensors: every rank of DP index d gets exactly
the samples the assignment gives d (checked against a plain-Python reference built from the
same samples), receives no other rank's bytes, and sees rank 0's errors."""

import random

import pytest
import torch
import torch.distributed as dist

from megatron_fork.rollout.types import FinishReason, Sample
from megatron_fork.trainer.rollout_scatter import (
    HEADER,
    RolloutToScatter,
    ScatterGroups,
    scatter_rollout,
)
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
    return RolloutToScatter(samples, advantages, trainable, order)


def _assign(step: RolloutToScatter, dp_size: int) -> RolloutToScatter:
    shuffled = step.assignment
    per = [shuffled[d::dp_size] for d in range(dp_size)]
    return RolloutToScatter(step.samples, step.advantages, step.trainable, per)


def _check_slice(got, step: RolloutToScatter, indices: list[int]) -> None:
    """``got`` against rank 0's samples at ``indices``, rebuilt in plain Python."""
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
    return 8 * len(HEADER) + 8 * 4 * len(chosen) + 4 * tokens + 4 * (responses + len(chosen))


def _round_trip_worker(rank, world_size, tp, pp, cp, num_samples):
    from megatron.core import parallel_state as ps

    init_megatron(tp=tp, pp=pp, cp=cp)
    dp_size, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    groups = ScatterGroups.from_parallel_state()
    for seed in (1, 2):  # twice: the second message must not be out of step with the first
        step = _assign(_step(num_samples, seed), dp_size)
        with _ReceivedBytes() as received:
            got = scatter_rollout(lambda step=step: step, groups, torch.device("cpu"))
        _check_slice(got, step, step.assignment[dp_rank])
        expected = 0 if rank == 0 else _slice_bytes(step, step.assignment[dp_rank])
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
        (lambda: bad, ValueError, "assignment has 4 DP slices"),
    ]:
        expected = kind if rank == 0 else RuntimeError
        with pytest.raises(expected, match=text):
            scatter_rollout(work, groups, cpu)
    step = _assign(_step(6, 4), 2)  # still in step after the errors
    _check_slice(
        scatter_rollout(lambda: step, groups, cpu),
        step,
        step.assignment[ps.get_data_parallel_rank()],
    )


def test_rank0_errors_reach_every_rank():
    run_distributed(_error_worker, 4, 2, timeout=120)


def test_single_process_and_empty_step():
    step = _assign(_step(5, 7), 1)
    _check_slice(scatter_rollout(lambda: step, ScatterGroups(), "cpu"), step, step.assignment[0])
    empty = RolloutToScatter([], torch.zeros(0), [], [[]])
    got = scatter_rollout(lambda: empty, ScatterGroups(), "cpu")
    assert got.token_ids.numel() == got.advantages.numel() == 0 and got.step_max_tokens == 0
    assert got.token_offsets.tolist() == [0]
    twice = RolloutToScatter(step.samples, step.advantages, step.trainable, [[0, 0, 1, 2, 3]])
    with pytest.raises(ValueError, match="exactly once"):
        scatter_rollout(lambda: twice, ScatterGroups(), "cpu")
