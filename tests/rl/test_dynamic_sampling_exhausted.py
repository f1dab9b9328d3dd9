"""Dynamic sampling that runs out of rounds: DAPO's error (verl recipe/dapo/dapo_ray_trainer.py
raises once ``num_gen_batches`` reaches ``max_num_gen_batches``) or this project's top-up, and
the error reaching every rank from rank 0's rollout."""

import pytest
import torch

from megatron_fork.rl.dynamic_sampling import (
    DynamicSamplingConfig,
    DynamicSamplingExhausted,
    fill_batch,
)
from megatron_fork.rl.rollout_scatter import ScatterGroups, scatter_rollout
from tests.support.distributed import run_distributed
from tests.support.megatron_setup import init_megatron

ERROR = DynamicSamplingConfig(max_rounds=2, on_exhausted="error")


def _all_equal_rounds(calls):
    def generate(index):
        calls.append(index)
        return [torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])]

    return generate


def test_error_mode_raises_after_max_rounds_naming_the_knob():
    calls = []
    with pytest.raises(DynamicSamplingExhausted, match=r"dynamic_sampling\.max_rounds \(now 2\)"):
        fill_batch(_all_equal_rounds(calls), lambda g: g, 3, ERROR)
    assert calls == [0, 1]  # both rounds ran first: 2 of 3 informative groups found


def test_error_mode_is_silent_when_the_batch_fills():
    calls = []
    batch = fill_batch(_all_equal_rounds(calls), lambda g: g, 2, ERROR)
    assert calls == [0, 1] and len(batch.groups) == 2 and not batch.short


def test_top_up_mode_returns_the_short_batch():
    top_up = DynamicSamplingConfig(max_rounds=2, on_exhausted="top_up")
    batch = fill_batch(_all_equal_rounds([]), lambda g: g, 3, top_up)
    assert batch.short and len(batch.groups) == 2 and batch.rounds == 2


def test_disabled_sampling_never_raises():
    off = DynamicSamplingConfig(enabled=False, on_exhausted="error")
    batch = fill_batch(_all_equal_rounds([]), lambda g: g, 5, off)
    assert batch.short and batch.rounds == 1  # a short first round is not "run out"


def test_defaults_keep_the_top_up_and_bad_values_fail():
    assert DynamicSamplingConfig() == DynamicSamplingConfig(max_rounds=3, on_exhausted="top_up")
    with pytest.raises(ValueError, match="on_exhausted"):
        DynamicSamplingConfig(on_exhausted="stop")


def _exhausted_worker(rank, world_size):
    init_megatron()  # DP = world size
    work = lambda: fill_batch(_all_equal_rounds([]), lambda g: g, 3, ERROR)
    expected = DynamicSamplingExhausted if rank == 0 else RuntimeError
    with pytest.raises(expected, match=r"dynamic_sampling\.max_rounds"):
        scatter_rollout(work, ScatterGroups.from_parallel_state(), torch.device("cpu"))


def test_the_error_raised_in_rank0s_rollout_reaches_every_rank():
    run_distributed(_exhausted_worker, 2, timeout=120)
