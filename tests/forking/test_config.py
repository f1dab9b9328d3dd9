"""ForkingLossConfig: defaults, validation on construction (ValueError naming the field), frozen."""

import dataclasses

import pytest

from megatron_fork.forking import NORMALIZERS, SCOPES, STRATEGIES, ForkingLossConfig


def test_defaults_follow_the_paper():
    config = ForkingLossConfig()
    assert config.rho == 0.2
    assert config.strategy == "top"
    assert config.scope == "global_step"
    assert config.normalizer == "all_tokens"
    assert config.eps_low == 0.2
    assert config.eps_high == 0.28
    assert config.dual_clip_c == 10.0
    assert config.kl_coef == 0.0
    assert config.entropy_coef == 0.0
    assert config.temperature == 1.0
    assert config.chunk_size is None


def test_choices_are_exported():
    assert set(STRATEGIES) == {"top", "bottom", "random", "all"}
    assert set(SCOPES) == {"local_microbatch", "global_microbatch", "global_step"}
    assert set(NORMALIZERS) == {"all_tokens", "selected_tokens", "microbatch_selected_mean"}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_every_choice_is_accepted(strategy, scope, normalizer):
    config = ForkingLossConfig(strategy=strategy, scope=scope, normalizer=normalizer)
    assert (config.strategy, config.scope, config.normalizer) == (strategy, scope, normalizer)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(rho=1.0),
        dict(rho=1e-3),
        dict(rho=1),
        dict(eps_low=0.0, eps_high=0.0),
        dict(eps_low=0.999),
        dict(eps_high=5.0),
        dict(dual_clip_c=None),
        dict(dual_clip_c=1.001),
        dict(kl_coef=0.5, entropy_coef=0.01),
        dict(temperature=0.01),
        dict(chunk_size=1),
        dict(seed=123),
    ],
)
def test_valid_values_are_accepted(kwargs):
    config = ForkingLossConfig(**kwargs)
    for name, value in kwargs.items():
        assert getattr(config, name) == value


@pytest.mark.parametrize(
    "rho", [0, 0.0, -0.1, 1.0001, 1.5, float("nan"), float("inf"), "0.2", None]
)
def test_rho_outside_zero_one_raises(rho):
    with pytest.raises(ValueError, match="rho"):
        ForkingLossConfig(rho=rho)


@pytest.mark.parametrize(
    ("field", "value"),
    [("strategy", "highest"), ("strategy", "Top"), ("scope", "global"), ("normalizer", "tokens")],
)
def test_unknown_choice_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"unknown {field} '{value}'"):
        ForkingLossConfig(**{field: value})


@pytest.mark.parametrize("field", ["eps_low", "eps_high", "kl_coef", "entropy_coef"])
@pytest.mark.parametrize("value", [-0.01, float("nan")])
def test_negative_coefficient_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ForkingLossConfig(**{field: value})


@pytest.mark.parametrize("value", [1.0, 1.5])
def test_eps_low_at_least_one_raises(value):
    with pytest.raises(ValueError, match="eps_low must be < 1"):
        ForkingLossConfig(eps_low=value)


@pytest.mark.parametrize("value", [1.0, 0.5, 0.0, -2.0, float("nan")])
def test_dual_clip_c_not_above_one_raises(value):
    with pytest.raises(ValueError, match="dual_clip_c must be > 1"):
        ForkingLossConfig(dual_clip_c=value)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_non_positive_temperature_raises(value):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ForkingLossConfig(temperature=value)


@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_chunk_size_raises(value):
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        ForkingLossConfig(chunk_size=value)


def test_config_is_frozen():
    config = ForkingLossConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rho = 0.5
    assert dataclasses.replace(config, rho=0.5).rho == 0.5
    with pytest.raises(ValueError, match="rho"):
        dataclasses.replace(config, rho=2.0)


def test_config_is_hashable_and_compares_by_value():
    assert ForkingLossConfig(rho=0.3) == ForkingLossConfig(rho=0.3)
    assert hash(ForkingLossConfig(rho=0.3)) == hash(ForkingLossConfig(rho=0.3))
    assert ForkingLossConfig(rho=0.3) != ForkingLossConfig(rho=0.4)


def test_vocab_size_must_be_positive():
    with pytest.raises(ValueError, match="vocab_size"):
        ForkingLossConfig(vocab_size=0)
