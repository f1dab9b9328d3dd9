"""The rollout phase with the real torch engine (a tiny random Qwen3), the real tokenizer and
the real math reward: per-response seeds make a step's rollouts reproducible, groups whose
responses are all wrong are dropped by dynamic sampling and a short batch is topped up with
zero-advantage groups, counted; request ids stay unique when a round holds a prompt twice."""

import pytest
import torch

from megatron_fork.data.prompt_sets import DataConfig, load_prompt_sets
from megatron_fork.data.prompt_stream import PromptStream
from megatron_fork.data.tokenizer import build_and_save, load_tokenizer, special_token_ids
from megatron_fork.rewards.config import MathRewardConfig
from megatron_fork.rewards.scorer import MathRewardScorer
from megatron_fork.rl.advantages import AdvantageConfig
from megatron_fork.rl.dynamic_sampling import DynamicSamplingConfig, DynamicSamplingExhausted
from megatron_fork.rl.rollout_phase import (
    GroupSampler,
    collect_rollout_batch,
    evaluate_avg_at_k,
    request_id,
)
from megatron_fork.rollout.torch_engine import TorchRolloutEngine
from megatron_fork.rollout.types import SamplingParams
from tests.support.tiny_qwen3 import tiny_qwen3_model

SAMPLING = SamplingParams(max_new_tokens=6)
TWO_ROUNDS = DynamicSamplingConfig(max_rounds=2)


@pytest.fixture(scope="module")
def sampler(tmp_path_factory):
    tokenizer = load_tokenizer(build_and_save(tmp_path_factory.mktemp("tok")))
    ids = special_token_ids(tokenizer)
    model = tiny_qwen3_model(seed=0, vocab_size=ids.vocab_size)
    config = MathRewardConfig(max_response_tokens=6, overlong_buffer=2, num_workers=1)
    with MathRewardScorer(config) as scorer:
        yield GroupSampler(TorchRolloutEngine(model), tokenizer, scorer, ids.eos)


@pytest.fixture(scope="module")
def prompts():
    return load_prompt_sets(DataConfig(synthetic_terms=2, synthetic_heldout=20)).train


def collect(sampler, prompts, step, dynamic=TWO_ROUNDS):
    return collect_rollout_batch(
        sampler, PromptStream(prompts, seed=0), step, 0, 3, 4, 4, SAMPLING, dynamic,
        AdvantageConfig(),
    )  # fmt: skip


def test_a_step_draws_the_same_rollouts_every_time_and_new_ones_next_step(sampler, prompts):
    first, again, other = (collect(sampler, prompts, s) for s in (1, 1, 2))
    assert first.samples == again.samples
    assert [s.output_ids for s in first.samples] != [s.output_ids for s in other.samples]


def test_all_wrong_groups_are_dropped_and_the_batch_topped_up(sampler, prompts):
    # A random model never writes a correct box: every group has equal rewards.
    batch = collect(sampler, prompts, step=1)
    assert len(batch.groups) == 3 and all(len(g.samples) == 4 for g in batch.groups)
    assert batch.metrics["dynamic_sampling/rounds"] == 2  # kept trying, up to max_rounds
    assert batch.metrics["dynamic_sampling/generated_groups"] == 8
    assert batch.metrics["dynamic_sampling/dropped_equal_reward"] == 8
    assert batch.metrics["dynamic_sampling/padded_groups"] == 3
    assert batch.metrics["dynamic_sampling/exhausted"] == 1.0  # counted under the top-up
    assert batch.metrics["rollout/accuracy"] == 0.0
    torch.testing.assert_close(batch.advantages, torch.zeros(3, 4))  # no signal, no gradient
    assert batch.informative_groups == 0 and batch.trainable == [False] * 12  # filler only


def test_run_out_rounds_stop_the_step_under_the_papers_behaviour(sampler, prompts):
    dapo = DynamicSamplingConfig(max_rounds=2, on_exhausted="error")  # DAPO: an error
    with pytest.raises(DynamicSamplingExhausted, match=r"0 of 3 .* in 2 rounds .*max_rounds"):
        collect(sampler, prompts, 1, dapo)


def test_without_dynamic_sampling_the_first_round_is_kept(sampler, prompts):
    batch = collect(sampler, prompts, 1, DynamicSamplingConfig(enabled=False))
    assert batch.metrics["dynamic_sampling/rounds"] == 1
    assert batch.metrics["dynamic_sampling/padded_groups"] == 0
    assert batch.metrics["dynamic_sampling/exhausted"] == 0.0
    assert [g.example.id for g in batch.groups] == [
        e.id for e in PromptStream(prompts, seed=0).take(3)
    ]


class _Recording:
    """The engine, keeping the request ids of each generate call."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, requests):
        self.calls.append([r.request_id for r in requests])
        return self.engine.generate(requests)


def test_request_ids_are_unique_when_a_round_repeats_prompts(sampler, prompts):
    """3 prompts, 4 per round: every round crosses an epoch boundary and holds a prompt twice.
    No id repeats within a step (sglang refuses a batch that repeats one) nor across the run,
    and all have one length, so none is a prefix of another (sglang aborts by prefix)."""
    recording = _Recording(sampler.engine)
    recorder = GroupSampler(recording, sampler.tokenizer, sampler.scorer, sampler.eos_id)
    stream = PromptStream(prompts[:3], seed=0)
    for step in (1, 2):
        collect_rollout_batch(recorder, stream, step, 0, 3, 4, 4, SAMPLING, TWO_ROUNDS,
                              AdvantageConfig())  # fmt: skip
    evaluate_avg_at_k(recorder, prompts[:5], 2, SAMPLING, seed=0, chunk=2)
    assert len(recording.calls) == 2 * 2 + 3  # two rounds a step, three eval chunks
    every = [rid for call in recording.calls for rid in call]
    assert len(set(every)) == len(every) == 2 * 2 * 4 * 4 + 5 * 2
    assert len({len(rid) for rid in every}) == 1
    assert recording.calls[1][5] == "r00000001-0001-000001-0001"  # step 1, round 1, slot 1


def test_a_request_id_field_too_wide_for_its_digits_raises():
    assert request_id("r", 12, 0, 37, 3) == "r00000012-0000-000037-0003"
    with pytest.raises(ValueError, match="10000 does not fit 4 digits"):
        request_id("r", 1, 0, 0, 10_000)
