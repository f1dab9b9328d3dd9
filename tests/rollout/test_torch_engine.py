"""The torch rollout engine against a plain teacher-forced forward of the same HF model: its
log-probs, its greedy tokens, its stop/length handling, per-request seeds and weight updates."""

import pytest
import torch

from megatron_fork.rollout.sampling import _truncate
from megatron_fork.rollout.torch_engine import TorchRolloutEngine
from megatron_fork.rollout.types import GenerationRequest, SamplingParams
from tests.support.tiny_qwen3 import tiny_qwen3_model

VOCAB = 60


@pytest.fixture(scope="module")
def model():
    return tiny_qwen3_model(seed=3)


def _requests(sampling, prompts=((5, 7, 9), (11,), (2, 3, 4, 5, 6, 8)), seeds=(1, 2, 3)):
    return [
        GenerationRequest(tuple(p), SamplingParams(**{**sampling, "seed": seed}), f"r{i}")
        for i, (p, seed) in enumerate(zip(prompts, seeds, strict=True))
    ]


def _teacher_forced_logits(model, sample):
    """fp32 logits at the positions that produced each output token, one unpadded forward."""
    ids = torch.tensor([sample.prompt_ids + sample.output_ids[:-1]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]  # [len, V]
    return logits[len(sample.prompt_ids) - 1 :]  # [n_out, V]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_a_teacher_forced_forward(model, temperature):
    engine = TorchRolloutEngine(model, max_batch_size=2)  # 3 requests: two batches
    samples = engine.generate(_requests(dict(temperature=temperature, max_new_tokens=6)))
    for sample in samples:
        logits = _teacher_forced_logits(model, sample)
        expected = torch.log_softmax(logits / temperature, -1)
        expected = expected.gather(-1, torch.tensor(sample.output_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(
            torch.tensor(sample.output_logprobs), expected, rtol=0, atol=2e-5
        )


def test_greedy_is_argmax_and_independent_of_the_batch(model):
    engine = TorchRolloutEngine(model)
    together = engine.generate(_requests(dict(temperature=0.0, max_new_tokens=5)))
    for sample in together:
        logits = _teacher_forced_logits(model, sample)
        assert list(sample.output_ids) == logits.argmax(-1).tolist()
    alone = [engine.generate([r])[0] for r in _requests(dict(temperature=0.0, max_new_tokens=5))]
    assert [s.output_ids for s in alone] == [s.output_ids for s in together]


def test_seeds_reproduce_and_differ(model):
    engine = TorchRolloutEngine(model)
    sampling = dict(temperature=1.0, max_new_tokens=12)
    first = engine.generate(_requests(sampling))
    again = engine.generate(_requests(sampling))
    other = engine.generate(_requests(sampling, seeds=(7, 8, 9)))
    assert [s.output_ids for s in first] == [s.output_ids for s in again]
    assert [s.output_ids for s in first] != [s.output_ids for s in other]


def test_requests_without_a_seed_draw_anew_on_every_call(model):
    engine = TorchRolloutEngine(model)
    unseeded = [GenerationRequest((5, 7), SamplingParams(max_new_tokens=12))] * 3
    first, second = engine.generate(unseeded), engine.generate(unseeded)
    assert len({s.output_ids for s in first}) > 1  # rows differ within a call
    assert [s.output_ids for s in first] != [s.output_ids for s in second]  # and across calls


def test_top_k_one_and_tiny_top_p_are_greedy(model):
    engine = TorchRolloutEngine(model)
    greedy = engine.generate(_requests(dict(temperature=0.0, max_new_tokens=5)))
    top_k = engine.generate(_requests(dict(temperature=1.0, top_k=1, max_new_tokens=5)))
    top_p = engine.generate(_requests(dict(temperature=1.0, top_p=1e-6, max_new_tokens=5)))
    assert [s.output_ids for s in top_k] == [s.output_ids for s in greedy]
    assert [s.output_ids for s in top_p] == [s.output_ids for s in greedy]


def test_stop_and_length_finish_reasons(model):
    engine = TorchRolloutEngine(model)
    stop_all = SamplingParams(max_new_tokens=5, stop_token_ids=tuple(range(VOCAB)), seed=0)
    (stopped,) = engine.generate([GenerationRequest((1, 2), stop_all)])
    assert stopped.finish_reason.kind == "stop"
    assert stopped.output_ids == (stopped.finish_reason.matched,)  # the stop id is kept
    (long,) = engine.generate([GenerationRequest((1, 2), SamplingParams(max_new_tokens=3))])
    assert long.finish_reason.kind == "length" and len(long.output_ids) == 3


def test_truncation_keeps_top_k_and_the_top_p_nucleus():
    probs = torch.tensor([0.2, 0.5, 0.3])
    assert torch.equal(_truncate(probs, -1, 0.6), torch.tensor([0.0, 0.5, 0.3]))
    assert torch.equal(_truncate(probs, 1, 1.0), torch.tensor([0.0, 0.5, 0.0]))
    assert torch.equal(_truncate(probs, -1, 1.0), probs)


def test_weight_updates_and_versions(model):
    engine = TorchRolloutEngine(tiny_qwen3_model(seed=4))
    assert engine.version == 0
    tensors = list(model.state_dict().items())  # every tensor, HF names, in three buckets
    engine.update_weights(tensors[:5])
    engine.update_weights(tensors[5:10])
    assert engine.version == 0  # a partly applied sync is not a new version
    engine.update_weights(tensors[10:], version=7)
    assert engine.version == 7
    (sample,) = engine.generate(_requests(dict(temperature=0.0, max_new_tokens=3))[:1])
    assert sample.weight_version == 7
    reference = TorchRolloutEngine(model).generate(
        _requests(dict(temperature=0.0, max_new_tokens=3))[:1]
    )
    assert sample.output_ids == reference[0].output_ids  # the new weights are in use
    with pytest.raises(KeyError, match="no parameter"):
        engine.update_weights([("model.nope.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="model.norm.weight"):
        engine.update_weights([("model.norm.weight", torch.zeros(3))])


@pytest.mark.parametrize(
    "bad", [dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=0), dict(max_new_tokens=0)]
)
def test_bad_sampling_params_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)


def test_empty_prompt_is_refused(model):
    with pytest.raises(ValueError, match="empty prompt"):
        TorchRolloutEngine(model).generate([GenerationRequest(())])
