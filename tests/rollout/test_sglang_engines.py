"""sglang itself. The command lines are checked here against the flags of the pinned sglang
(../shared/SGLANG_API.md); the real server test needs a GPU machine with sglang installed
(``pip install "sglang[all]==<SGLANG_VERSION>"``, then ``pytest -m gpu tests/rollout``) and is
skipped elsewhere with the reason."""

import importlib.util
import socket

import pytest
import torch

from megatron_fork.rollout.sglang_launch import (
    SglangEngineConfig,
    sglang_router_command,
    sglang_server_command,
)

HAVE_SGLANG = importlib.util.find_spec("sglang") is not None


def _flags(command: list[str]) -> dict:
    """--flag value pairs (flags without a value map to True)."""
    flags, i = {}, command.index("sglang.launch_server") + 1
    while i < len(command):
        if i + 1 < len(command) and not command[i + 1].startswith("--"):
            flags[command[i]] = command[i + 1]
            i += 2
        else:
            flags[command[i]] = True
            i += 1
    return flags


def test_engine_command_lines():
    plain = _flags(sglang_server_command(SglangEngineConfig("/models/qwen3-8b", port=30001)))
    assert plain["--model-path"] == "/models/qwen3-8b" and plain["--port"] == "30001"
    assert plain["--host"] == "127.0.0.1" and plain["--load-format"] == "dummy"
    assert plain["--enable-deterministic-inference"] is True
    assert "--quantization" not in plain and "--enable-memory-saver" not in plain
    fp8 = SglangEngineConfig("/m", tp_size=4, base_gpu_id=4, fp8=True, colocated=True,
                             mem_fraction_static=0.5)  # fmt: skip
    flags = _flags(sglang_server_command(fp8))
    assert flags["--quantization"] == "fp8" and flags["--enable-memory-saver"] is True
    assert (flags["--tp-size"], flags["--base-gpu-id"], flags["--mem-fraction-static"]) == (
        "4", "4", "0.5",
    )  # fmt: skip
    router = sglang_router_command(["http://a:1", "http://b:2"], port=9)
    assert router[router.index("--worker-urls") + 1 : router.index("--policy")] == [
        "http://a:1", "http://b:2",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="mem_fraction_static"):
        SglangEngineConfig("/m", mem_fraction_static=1.5)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(not HAVE_SGLANG, reason="needs sglang (not installable on this machine)")
def test_real_sglang_generates_and_takes_weight_updates(tmp_path):
    from megatron_fork.data.tokenizer import build_and_save
    from megatron_fork.rollout.server_engine import ServerRolloutEngine
    from megatron_fork.rollout.server_pool import ServerPool
    from megatron_fork.rollout.types import GenerationRequest, SamplingParams
    from tests.support.tiny_qwen3 import tiny_qwen3_model

    model = tiny_qwen3_model(seed=0).to(torch.bfloat16).cuda()  # NCCL sends GPU tensors
    model.save_pretrained(tmp_path / "hf")
    build_and_save(tmp_path / "hf")
    config = SglangEngineConfig(str(tmp_path / "hf"), port=_free_port(), mem_fraction_static=0.3)
    with ServerPool([sglang_server_command(config)], urls=[config.url]) as pool:
        engine = ServerRolloutEngine(pool.urls, pool, backend="nccl")
        engine.update_weights(list(model.state_dict().items()))
        engine.update_weights([], version=1)
        requests = [GenerationRequest((1, 2, 3), SamplingParams(max_new_tokens=4, seed=1), "a")]
        (sample,) = engine.generate(requests)
        assert sample.weight_version == 1 and len(sample.output_ids) >= 1
