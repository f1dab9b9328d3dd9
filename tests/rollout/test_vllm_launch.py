"""A vLLM engine's command line and environment (``rollout/vllm_launch.py``), against vLLM
0.34.0's own names, read from its source: ``engine/arg_utils.py`` (``--tensor-parallel-size``
1223, ``--gpu-memory-utilization`` 1403, ``--dtype`` 984, ``--seed`` 985, ``--max-model-len``
998, ``--quantization`` 999, ``--logprobs-mode`` 1017, ``--enable-sleep-mode`` 1053,
``--load-format`` 1096, ``--weight-transfer-config`` 1945), ``entrypoints/common/cli_args.py``
(``--host``/``--port`` 294-296, ``--enable-scale-out`` 217), ``entrypoints/cli/main.py`` (the
``vllm`` console script's module), ``envs.py`` (``VLLM_SERVER_DEV_MODE`` 1551,
``VLLM_NCCL_SO_PATH`` 797, ``VLLM_BATCH_INVARIANT`` 681, ``VLLM_API_KEY`` 879). Nothing here
runs vLLM: the ``gpu`` kit check does (tools/gpu_checks/vllm_check.py)."""

import json
import re

import pytest

from megatron_fork.rollout.fp8 import QUANTIZATION_CONFIG
from megatron_fork.rollout.vllm_launch import (
    VLLM_VERSION,
    PublicBindError,
    VllmEngineConfig,
    fp8_engine_model,
    vllm_server_command,
    vllm_server_environment,
)

VLLM_FLAGS_WITH_VALUES = {
    "--host", "--port", "--tensor-parallel-size", "--gpu-memory-utilization", "--dtype", "--seed",
    "--weight-transfer-config", "--logprobs-mode", "--max-model-len", "--quantization",
    "--load-format",
}  # fmt: skip
"""Flags of vLLM 0.34.0 that take a value (the rest are switches)."""


def _parse(command: list[str]) -> tuple[list[str], dict[str, str], set[str]]:
    """(the words before the first flag, flag -> value, switches)."""
    first = next(i for i, word in enumerate(command) if word.startswith("--"))
    values, switches, words = {}, set(), command[first:]
    i = 0
    while i < len(words):
        flag = words[i]
        assert flag.startswith("--"), (flag, words)
        assert flag not in values and flag not in switches, f"{flag} given twice"
        if flag in VLLM_FLAGS_WITH_VALUES:
            values[flag], i = words[i + 1], i + 2
        else:
            switches.add(flag)
            i += 1
    return command[:first], values, switches


def test_the_pin_is_one_exact_release():
    assert VLLM_VERSION == "0.34.0"


def test_every_flag_of_a_bf16_rollout_engine():
    config = VllmEngineConfig(
        "/models/q8/hf", host="10.1.2.3", port=30001, tp_size=2, max_model_len=22528,
        random_seed=7, python="/opt/vllm/bin/python",
    )  # fmt: skip
    head, values, switches = _parse(vllm_server_command(config))
    assert head == [
        "/opt/vllm/bin/python",
        "-m",
        "vllm.entrypoints.cli.main",
        "serve",
        "/models/q8/hf",
    ]
    assert values == {
        "--host": "10.1.2.3",
        "--port": "30001",
        "--tensor-parallel-size": "2",
        "--gpu-memory-utilization": "0.85",
        "--dtype": "bfloat16",
        "--seed": "7",
        "--weight-transfer-config": '{"backend":"nccl"}',
        "--logprobs-mode": "processed_logprobs",
        "--max-model-len": "22528",
        "--load-format": "dummy",
    }
    assert json.loads(values["--weight-transfer-config"]) == {"backend": "nccl"}
    assert switches == {"--enable-scale-out"}
    assert config.url == "http://10.1.2.3:30001"


def test_fp8_colocated_and_real_weights_change_only_their_flags(tmp_path):
    config = VllmEngineConfig(
        str(tmp_path), fp8=True, colocated=True, dummy_weights=False, max_model_len=None
    )
    _, values, switches = _parse(vllm_server_command(config))
    assert values["--quantization"] == "fp8" and "--load-format" not in values
    assert "--max-model-len" not in values  # the model config's own
    assert switches == {"--enable-scale-out", "--enable-sleep-mode"}


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "", None, "0", " 0.0.0.0 "])
def test_every_interface_is_refused_naming_the_fix(host):
    with pytest.raises(PublicBindError) as refused:
        VllmEngineConfig("/m", host=host)
    message = str(refused.value)
    assert "take no API key" in message and "/update_weights" in message
    assert "ENGINE_BIND_INTERFACE" in message and "127.0.0.1" in message


def test_a_config_made_around_the_check_is_refused_by_the_command_too():
    config = VllmEngineConfig("/m", host="127.0.0.1")
    object.__setattr__(config, "host", "0.0.0.0")  # frozen: only by force
    with pytest.raises(PublicBindError):
        vllm_server_command(config)


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.7", "gpu-a17", "::1", "fd00::7"])
def test_one_interface_is_accepted(host):
    assert _parse(vllm_server_command(VllmEngineConfig("/m", host=host)))[1]["--host"] == host


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("gpu_memory_utilization", 1.0, "weight-transfer buffers"),
        ("gpu_memory_utilization", 0.0, "gpu_memory_utilization in (0, 1)"),
        ("tp_size", 0, "tp_size must be >= 1"),
        ("random_seed", -1, "[0, 2**32)"),
        ("random_seed", 2**32, "[0, 2**32)"),  # vLLM: Field(ge=0, le=2**32 - 1)
        ("max_model_len", 1, "max_model_len must be >= 2"),
    ],
)
def test_values_vllm_would_refuse_are_refused_here(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        VllmEngineConfig("/m", **{field: value})


def test_environment_opens_the_rl_routes_and_loads_the_images_nccl():
    base = {"PATH": "/bin", "VLLM_NCCL_SO_PATH": "/usr/local/lib/megatron-fork/libnccl.so.2"}
    env = vllm_server_environment(base, VllmEngineConfig("/m"))
    assert env["VLLM_SERVER_DEV_MODE"] == "1" and env["PATH"] == "/bin"
    assert env["VLLM_NCCL_SO_PATH"] == "/usr/local/lib/megatron-fork/libnccl.so.2"
    assert "VLLM_BATCH_INVARIANT" not in env and "LD_PRELOAD" not in env
    assert base == {"PATH": "/bin", "VLLM_NCCL_SO_PATH": base["VLLM_NCCL_SO_PATH"]}  # a copy
    # An image that names the library only for sglang: the same file for vLLM.
    older = vllm_server_environment(
        {"SGLANG_NCCL_LIBRARY": "/x/libnccl.so.2"}, VllmEngineConfig("/m")
    )
    assert older["VLLM_NCCL_SO_PATH"] == "/x/libnccl.so.2"
    assert "VLLM_NCCL_SO_PATH" not in vllm_server_environment({}, VllmEngineConfig("/m"))


def test_batch_invariance_is_the_configs_choice_alone():
    on = vllm_server_environment({}, VllmEngineConfig("/m", batch_invariant=True))
    off = vllm_server_environment({"VLLM_BATCH_INVARIANT": "1"}, VllmEngineConfig("/m"))
    assert on["VLLM_BATCH_INVARIANT"] == "1" and "VLLM_BATCH_INVARIANT" not in off


def test_the_api_key_reaches_vllm_through_its_environment_never_the_command_line():
    config = VllmEngineConfig("/m", api_key="k-3f9a")
    assert vllm_server_environment({}, config)["VLLM_API_KEY"] == "k-3f9a"
    command = vllm_server_command(config)
    assert "k-3f9a" not in " ".join(command) and "--api-key" not in command
    # No key in the config: a stray one in the environment would still lock vLLM's routes.
    assert "VLLM_API_KEY" not in vllm_server_environment(
        {"VLLM_API_KEY": "x"}, VllmEngineConfig("/m")
    )


def test_the_fp8_folder_carries_a_quantization_config_vllms_fp8_reads(tmp_path):
    """vLLM 0.34.0 ``Fp8Config.from_config`` (``layers/quantization/fp8.py:155-172``): needs
    ``quant_method`` containing "fp8" (checkpoint FP8: online ``fp8`` now raises, :103) and
    ``activation_scheme``; ``weight_block_size`` has 2 entries and then needs "dynamic"
    (:119-130). ``config/model.py:1409-1479``: the method comes from config.json's
    ``quantization_config`` and must equal ``--quantization``."""
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "qwen3", "vocab_size": 60}')
    (hf / "tokenizer.json").write_text("{}")
    folder = fp8_engine_model(hf, tmp_path / "fp8")
    written = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert written == QUANTIZATION_CONFIG
    assert "fp8" in written["quant_method"] and written["activation_scheme"] == "dynamic"
    assert len(written["weight_block_size"]) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "tokenizer.json"]
    _, values, _ = _parse(vllm_server_command(VllmEngineConfig(str(folder), fp8=True)))
    assert values["--quantization"] == written["quant_method"]
