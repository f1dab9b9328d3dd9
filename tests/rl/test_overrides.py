"""``section.field=value`` overrides and rebuilding a run config from its saved JSON."""

import dataclasses
import json
import re

import pytest

from megatron_fork.rl.overrides import apply_overrides, config_from_dict
from megatron_fork.rl.rl_config import RLConfig


def base() -> RLConfig:
    return RLConfig(base_model="m", output_dir="o")


def test_overrides_reach_nested_fields_and_parse_literals():
    config = apply_overrides(
        base(), ["loss.rho=0.5", "loss.strategy=random", "steps=7", "eval.max_prompts=None"]
    )
    assert (config.loss.rho, config.loss.strategy, config.steps) == (0.5, "random", 7)
    assert config.eval.max_prompts is None
    assert config.rollout == base().rollout  # untouched sections unchanged


def test_int_for_a_float_field_becomes_float():
    assert apply_overrides(base(), ["optimizer.lr=1"]).optimizer.lr == 1.0


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("loss.rhoo=0.5", "unknown config key 'loss.rhoo'"),
        ("loss=1", "is a section"),
        ("steps.x=1", "is a value"),
        ("steps", "must look like"),
    ],
)
def test_bad_overrides_name_the_key(item, message):
    with pytest.raises((KeyError, ValueError), match=message):
        apply_overrides(base(), [item])


def test_validation_reruns_on_override():
    with pytest.raises(ValueError, match="samples_per_prompt"):
        apply_overrides(base(), ["rollout.samples_per_prompt=1"])


def test_saved_config_round_trips():
    config = apply_overrides(base(), ["loss.rho=0.1", "parallel.tensor_parallel=2"])
    data = json.loads(json.dumps(dataclasses.asdict(config)))
    assert config_from_dict(RLConfig, data) == config


def test_unknown_saved_key_raises():
    data = dataclasses.asdict(base())
    data["loss"]["bogus"] = 1
    with pytest.raises(KeyError, match="bogus"):
        config_from_dict(RLConfig, data)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("parallel.tensor_parallel=two", "parallel.tensor_parallel='two': expected int, got str"),
        ("parallel.sequence_parallel=1", "expected bool, got int"),
        ("loss.rho=high", "expected float, got str"),
        ("rollout.server_urls=3", "expected tuple"),
    ],
)
def test_an_override_of_the_wrong_type_is_refused_by_name(override, message):
    config = RLConfig(base_model="m", output_dir="o")
    with pytest.raises(TypeError, match=re.escape(message)):
        apply_overrides(config, [override])


def test_overrides_of_the_right_type_pass():
    config = RLConfig(base_model="m", output_dir="o")
    changed = apply_overrides(
        config, ["eval.max_prompts=None", "rollout.temperature=1", "rollout.server_urls=('a',)"]
    )
    assert changed.eval.max_prompts is None and changed.rollout.server_urls == ("a",)
