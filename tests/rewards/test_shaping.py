"""DAPO overlong shaping values computed by hand, and config validation."""

import pytest

from megatron_fork.rewards.config import MathRewardConfig
from megatron_fork.rewards.shaping import overlong_reward

SMALL = MathRewardConfig(max_response_tokens=100, overlong_buffer=20)
"""Penalty ramps from 0 at 80 tokens to -1 at 100."""


@pytest.mark.parametrize(
    "length, expected",
    [
        (0, 0.0),
        (50, 0.0),
        (80, 0.0),  # exactly L_max - L_buf
        (81, -0.05),  # -(81 - 80) / 20
        (85, -0.25),
        (90, -0.5),
        (99, -0.95),
        (100, -1.0),  # L_max
        (101, -1.0),  # truncated
        (10_000, -1.0),
    ],
)
def test_overlong_reward_by_hand(length, expected):
    assert overlong_reward(length, SMALL) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("length, expected", [(80, 0.0), (90, -0.25), (100, -0.5), (150, -0.5)])
def test_penalty_factor_scales(length, expected):
    config = MathRewardConfig(
        max_response_tokens=100, overlong_buffer=20, overlong_penalty_factor=0.5
    )
    assert overlong_reward(length, config) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "length, expected", [(16384, 0.0), (17408, -0.25), (18432, -0.5), (20480, -1.0)]
)
def test_paper_defaults(length, expected):
    # L_max 20480, L_buf 4096: the ramp starts at 16384.
    assert overlong_reward(length, MathRewardConfig()) == pytest.approx(expected, abs=1e-12)


def test_shaping_off_adds_nothing():
    config = MathRewardConfig(max_response_tokens=100, overlong_buffer=20, overlong_shaping=False)
    assert [overlong_reward(n, config) for n in (0, 90, 100, 500)] == [0.0] * 4


def test_no_negative_zero():
    assert str(overlong_reward(80, SMALL)) == "0.0"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"overlong_buffer": 0},
        {"max_response_tokens": 10, "overlong_buffer": 11},
        {"overlong_penalty_factor": -1.0},
        {"time_limit_s": 0.0},
        {"num_workers": 0},
        {"max_scan_chars": 0},
        {"start_method": "fork"},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        MathRewardConfig(**kwargs)


def test_buffer_unchecked_when_shaping_off():
    config = MathRewardConfig(overlong_shaping=False, overlong_buffer=0)  # accepted: unused
    assert overlong_reward(10**9, config) == 0.0
