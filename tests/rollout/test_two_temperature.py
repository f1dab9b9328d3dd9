"""Two-temperature decoding (the paper's experiment: T_high at high-entropy positions, T_low
elsewhere) against a reference sampler on fixed distributions: the same generator state draws
the same token from softmax(logits / T) with T chosen by hand from the entropy."""

import math

import pytest
import torch

from megatron_fork.rollout.sampling import next_token, position_temperature
from megatron_fork.rollout.sglang_protocol import ProtocolError, generate_payload
from megatron_fork.rollout.types import GenerationRequest, SamplingParams

# Entropy of a uniform distribution over 4 tokens: ln 4 = 1.386; of [0.97, 0.01 x 3]: 0.168.
FLAT = torch.log(torch.tensor([0.25, 0.25, 0.25, 0.25]))
PEAKED = torch.log(torch.tensor([0.97, 0.01, 0.01, 0.01]))
PARAMS = SamplingParams(temperature=0.6, high_entropy_temperature=1.5, entropy_threshold=0.672)


def _reference(logits, temperature, seed):
    probs = torch.softmax(logits / temperature, dim=-1)
    token = int(torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)))
    return token, math.log(float(probs[token]))


def test_the_temperature_follows_the_entropy():
    assert position_temperature(FLAT, PARAMS) == 1.5  # 1.386 >= 0.672
    assert position_temperature(PEAKED, PARAMS) == 0.6  # 0.168 < 0.672
    assert position_temperature(FLAT, SamplingParams(temperature=0.6)) == 0.6  # one temperature


@pytest.mark.parametrize(("logits", "temperature"), [(FLAT, 1.5), (PEAKED, 0.6)])
def test_draws_and_logprobs_equal_the_reference_sampler(logits, temperature):
    for seed in range(20):
        token, logprob = next_token(logits, PARAMS, torch.Generator().manual_seed(seed))
        expected_token, expected_logprob = _reference(logits, temperature, seed)
        assert token == expected_token
        assert logprob == pytest.approx(expected_logprob, abs=1e-6)


def test_high_temperature_spreads_the_peaked_distribution_only_above_the_threshold():
    # Threshold below the peaked entropy: now the peaked position samples at 1.5 as well.
    low_threshold = SamplingParams(temperature=0.6, high_entropy_temperature=1.5,
                                   entropy_threshold=0.1)  # fmt: skip
    draws = [
        next_token(PEAKED, low_threshold, torch.Generator().manual_seed(s))[0] for s in range(400)
    ]
    reference = [_reference(PEAKED, 1.5, s)[0] for s in range(400)]
    assert draws == reference and sum(t != 0 for t in draws) > 10  # T=1.5 leaves the peak


def test_servers_are_not_sent_two_temperature_requests():
    with pytest.raises(ProtocolError, match="not an sglang sampling parameter"):
        generate_payload([GenerationRequest((1,), PARAMS, "a")])
    with pytest.raises(ValueError, match="high_entropy_temperature must be > 0"):
        SamplingParams(high_entropy_temperature=0.0)
