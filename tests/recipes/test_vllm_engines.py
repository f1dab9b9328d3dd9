"""``rollout.backend=vllm`` in the recipes: the engine task starts vLLM instead of sglang on the
same GPU slice and port, on one private address (never every interface), with the job's key
under vLLM's name; the recipe checks apply vLLM's rules and its memory share; the Slurm job
hands the same backend to the trainer and the engines."""

import json
import re
import shutil
import socket
import subprocess

import pytest

from recipes import engine_task
from recipes.checks import check_recipe, engine_memory_share
from recipes.engine_address import engine_bind_address, interface_address
from recipes.engine_task import engine_launch
from recipes.registry import build_recipe
from recipes.train import with_engines_of_this_job
from tests.recipes.sbatch_support import run_with_stubs, sruns

VLLM = ["rollout.backend=vllm"]
SLICE = {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "ENGINE_BIND_ADDRESS": "10.0.0.7"}


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_a_vllm_override_of_each_qwen3_recipe_builds_and_passes_its_checks():
    for name in ("qwen3_8b", "qwen3_14b", "qwen3_32b"):
        recipe = build_recipe(name, VLLM)
        assert recipe.config.rollout.backend == "vllm"
        assert check_recipe(recipe).fits


def test_the_backend_picks_the_engine_on_the_same_gpus_and_port():
    environ = {**SLICE, "VLLM_PYTHON": "/opt/vllm/bin/python", "SGLANG_PYTHON": "/opt/sg/python"}
    vllm_cmd, vllm_env = engine_launch(build_recipe("qwen3_14b", VLLM), 1, environ)
    sglang_cmd, sglang_env = engine_launch(build_recipe("qwen3_14b"), 1, environ)
    assert vllm_cmd[:4] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.cli.main", "serve"]
    assert sglang_cmd[:3] == ["/opt/sg/python", "-m", "sglang.launch_server"]
    # engine TP 4: engine 1 of the node takes GPUs 4-7 and port 30001, whichever backend
    assert vllm_env["CUDA_VISIBLE_DEVICES"] == sglang_env["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    assert _flag(vllm_cmd, "--port") == _flag(sglang_cmd, "--port") == "30001"
    assert _flag(vllm_cmd, "--tensor-parallel-size") == _flag(sglang_cmd, "--tp-size") == "4"
    assert _flag(vllm_cmd, "--host") == "10.0.0.7"  # one address; sglang: every interface
    assert _flag(sglang_cmd, "--host") == "0.0.0.0"
    assert _flag(vllm_cmd, "--max-model-len") == "22528"  # launch.context_tokens
    assert _flag(vllm_cmd, "--gpu-memory-utilization") == "0.85"
    assert _flag(vllm_cmd, "--load-format") == "dummy" and vllm_env["VLLM_SERVER_DEV_MODE"] == "1"
    assert _flag(vllm_cmd, "--seed") == str(build_recipe("qwen3_14b").config.seed)


def test_the_engine_task_execs_vllm_with_the_jobs_key(monkeypatch):
    started = {}
    monkeypatch.setattr(engine_task.os, "execve", lambda p, a, e: started.update(argv=a, env=e))
    for key, value in {**SLICE, "SLURM_LOCALID": "3", "VLLM_API_KEY": "k-77"}.items():
        monkeypatch.setenv(key, value)
    overrides = ["launch.engines.gpu_memory_utilization=0.7", "launch.engines.batch_invariant=True"]
    engine_task.main(["qwen3_8b", *VLLM, *overrides])
    argv, env = started["argv"], started["env"]
    assert argv[1:4] == ["-m", "vllm.entrypoints.cli.main", "serve"]
    assert _flag(argv, "--port") == "30003" and env["CUDA_VISIBLE_DEVICES"] == "6,7"
    assert _flag(argv, "--gpu-memory-utilization") == "0.7"
    assert env["VLLM_API_KEY"] == "k-77" and "k-77" not in argv
    assert env["VLLM_BATCH_INVARIANT"] == "1"


def test_fp8_vllm_engines_serve_the_shared_fp8_folder(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "qwen3", "vocab_size": 60}')
    (hf / "tokenizer.json").write_text("{}")
    recipe = build_recipe("qwen3_8b", [*VLLM, f"base_model={hf}", "rollout.fp8=True"])
    config = engine_task.vllm_engine_config(recipe, 0, "10.0.0.7", {}, tmp_path / "scratch")
    folder = tmp_path / "scratch" / "fp8-engine-30000"
    assert config.model_path == str(folder) and config.fp8
    written = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert written["quant_method"] == "fp8" and written["weight_block_size"] == [128, 128]


@pytest.mark.parametrize("address", ["0.0.0.0", "::"])
def test_every_interface_is_refused_as_the_bind_address(address):
    with pytest.raises(SystemExit, match="take no API key"):
        engine_bind_address({"ENGINE_BIND_ADDRESS": address})


def test_an_interface_is_bound_by_its_own_address():
    """Against ``ip``'s answer for the first non-loopback interface with an IPv4 address."""
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip("needs the ip command")
    lines = subprocess.run([ip, "-4", "-o", "addr", "show"], capture_output=True, text=True)
    found = [line.split() for line in lines.stdout.splitlines() if " lo " not in f" {line} "]
    if not found:
        pytest.skip("no non-loopback IPv4 interface here")
    name, address = found[0][1], found[0][3].split("/")[0]
    assert interface_address(name) == address
    assert engine_bind_address({"ENGINE_BIND_INTERFACE": name}) == address


def test_loopback_and_unknown_interfaces_are_refused_with_the_nodes_interfaces():
    with pytest.raises(SystemExit, match="loopback address 127.0.0.1.*ENGINE_BIND_INTERFACE"):
        engine_bind_address({"ENGINE_BIND_INTERFACE": "lo"})
    with pytest.raises(SystemExit, match=r"ENGINE_BIND_INTERFACE=nope0: .*interfaces: lo"):
        engine_bind_address({"ENGINE_BIND_INTERFACE": "nope0"})


def test_by_default_the_node_binds_what_its_hostname_resolves_to():
    assert engine_bind_address({}, hostname="10.20.30.40") == "10.20.30.40"
    with pytest.raises(SystemExit, match="hostname localhost gives the loopback"):
        engine_bind_address({}, hostname="localhost")
    mine = socket.gethostname()
    resolved = socket.gethostbyname(mine)
    if not resolved.startswith("127."):
        assert engine_bind_address({}) == resolved


def test_vllm_rules_are_checked_before_submitting():
    with pytest.raises(ValueError, match="rollout.weight_backend=nccl"):
        check_recipe(build_recipe("qwen3_8b", [*VLLM, "rollout.weight_backend=gloo"]))
    with pytest.raises(ValueError, match=r"seed=-1: vLLM engines take a seed in \[0, 2\*\*32\)"):
        check_recipe(build_recipe("qwen3_8b", [*VLLM, "seed=-1"]))
    with pytest.raises(ValueError, match="gpu_memory_utilization must be in"):
        build_recipe("qwen3_8b", ["launch.engines.gpu_memory_utilization=1.0"])
    check_recipe(build_recipe("qwen3_8b", ["rollout.weight_backend=gloo"]))  # sglang's rules


def test_the_memory_plan_uses_the_backends_share():
    shares = ["launch.engines.gpu_memory_utilization=0.5", "launch.engines.mem_fraction_static=0.9"]
    vllm, sglang = build_recipe("qwen3_8b", [*VLLM, *shares]), build_recipe("qwen3_8b", shares)
    assert engine_memory_share(vllm) == 0.5 and engine_memory_share(sglang) == 0.9
    assert check_recipe(vllm).engine.pool < check_recipe(sglang).engine.pool


def test_the_trainer_joins_every_vllm_engine_tp_rank():
    recipe = build_recipe("qwen3_14b", [*VLLM, "launch.engines.nodes=1"])
    rollout = with_engines_of_this_job(recipe, {"ENGINE_NODES": "e1"}).config.rollout
    assert rollout.backend == "vllm" and rollout.server_tp_size == 4
    assert rollout.server_urls == ("http://e1:30000", "http://e1:30001")


def test_the_job_tells_trainer_and_engines_the_same_backend_and_one_key(
    sbatch_in_process, tmp_path
):
    script = sbatch_in_process("qwen3_8b", "rollout.backend=vllm")
    runs = sruns(script)
    assert runs[0][1][-2:] == ["qwen3_8b", "rollout.backend=vllm"]
    assert runs[1][1] == ["python", "-m", "recipes.engine_task", "qwen3_8b", "rollout.backend=vllm"]
    assert "VLLM_API_KEY" in runs[1][0]["container-env"].split(",")
    ran = run_with_stubs(script, tmp_path / "run", {})
    keys = {(env.get("SGLANG_API_KEY"), env.get("VLLM_API_KEY")) for _, env in ran.calls.values()}
    assert len(keys) == 1
    sglang_key, vllm_key = keys.pop()
    assert re.fullmatch(r"[0-9a-f]{64}", vllm_key) and vllm_key == sglang_key
    assert vllm_key not in ran.output and vllm_key not in script
