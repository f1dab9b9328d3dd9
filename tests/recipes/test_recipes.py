"""Every recipe builds and passes its checks; overrides reach the run config and the launch
spec; bad overrides (unknown key, wrong type, TP not dividing the heads, CP not dividing the
sequence, a layout that does not fit 80 GB) fail before anything is launched, with a message
naming the cause."""

import json
import socket
import subprocess
import sys

import pytest

from megatron_fork.planning import LayoutDoesNotFit
from megatron_fork.rollout.sglang_launch import sglang_server_command
from recipes import engine_task
from recipes.checks import check_recipe, context_multiple, training_layout
from recipes.engine_task import engine_config, engine_gpus
from recipes.registry import RECIPES, build_recipe
from recipes.train import with_engines_of_this_job

GPU_RECIPES = ["qwen3_8b", "qwen3_14b", "qwen3_32b"]
COLOCATED_RECIPES = ["qwen3_8b_1node", "qwen3_14b_2node"]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_and_passes_its_checks(name):
    recipe = build_recipe(name)
    plan = check_recipe(recipe)
    # packed, with a budget holding the longest prompt + response, in whole row units
    config, longest = recipe.config, recipe.launch.context_tokens
    assert config.packing and config.max_tokens_per_microbatch >= longest
    assert config.max_tokens_per_microbatch % context_multiple(recipe) == 0
    if name in GPU_RECIPES:
        assert plan.fits and plan.total <= plan.capacity
        assert longest >= 2048 + 20480
        # the plan is made at the budget (each CP rank holding its share), not at padded rows
        layout = training_layout(recipe)
        assert layout.micro_batch_tokens == config.max_tokens_per_microbatch
        assert layout.row_multiple == context_multiple(recipe)  # the trainer's row unit
        assert f"{config.max_tokens_per_microbatch // 2} per CP rank" in plan.table()
        assert recipe.data_parallel * recipe.config.parallel.model_parallel_size == 64
        assert recipe.config.loss.rho == 0.2 and recipe.config.loss.strategy == "top"
        assert recipe.config.rollout.max_new_tokens == 20480
        assert recipe.config.rollout.samples_per_prompt == 16
        assert recipe.config.precision.params == "bf16"
        # the paper's script: 10 generation rounds, then DAPO's error (not a topped-up batch)
        sampling = recipe.config.dynamic_sampling
        assert sampling.max_rounds == 10 and sampling.on_exhausted == "error"
        assert recipe.config.loss.regularizer_tokens == "response"  # KL / entropy as verl
    elif name in COLOCATED_RECIPES:  # test_colocated_recipes.py checks their phases
        assert plan.fits and plan.colocated and recipe.launch.engines.nodes == 0
    else:
        assert plan is None and recipe.launch.engines.nodes == 0


def test_overrides_reach_the_run_config_and_the_launch_spec():
    recipe = build_recipe(
        "qwen3_14b",
        ["loss.strategy=random", "loss.rho=0.1", "launch.train_nodes=16", "launch.engines.nodes=4"],
    )
    assert recipe.config.loss.strategy == "random" and recipe.config.loss.rho == 0.1
    assert recipe.launch.train_nodes == 16 and recipe.launch.engines.nodes == 4
    assert recipe.data_parallel == 16  # 128 GPUs / (TP 4 x CP 2)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["loss.rhoo=0.1"], KeyError, "unknown config key 'loss.rhoo'"),
        (["launch.trainnodes=2"], KeyError, "unknown config key 'launch.trainnodes'"),
        (["parallel.tensor_parallel=two"], TypeError, "expected int, got str"),
        (["launch.train_nodes=2.5"], TypeError, "launch.train_nodes=2.5: expected int"),
        (["parallel.tensor_parallel=3"], ValueError, "does not divide num_attention_heads=64"),
        (["parallel.context_parallel=3"], ValueError, "not divisible by 2 \\* context_parallel"),
        (
            ["packing=False", "launch.context_tokens=22530"],
            ValueError,
            "sequence_length=22530 is not divisible by 2 \\* context_parallel",
        ),
        (
            ["packing=False", "launch.context_tokens=22544"],
            ValueError,
            "context_tokens=22544 is not a multiple of 2048, .* use 24576",
        ),
        (
            ["max_tokens_per_microbatch=32770"],
            ValueError,
            "max_tokens_per_microbatch=32770 is not divisible by 2 \\* context_parallel",
        ),
        (
            ["max_tokens_per_microbatch=33792"],
            ValueError,
            "max_tokens_per_microbatch=33792 is not a multiple of 2048, .* use 34816",
        ),
        (
            ["launch.context_tokens=34000"],
            ValueError,
            "max_tokens_per_microbatch=32768 is below the longest prompt \\+ response "
            "\\(launch.context_tokens=34000\\).* at least 34816",
        ),
        (["launch.train_nodes=3"], ValueError, "24 ranks cannot hold TP x PP x CP = 32"),
        (
            ["launch.engines.tensor_parallel=3"],
            ValueError,
            "tensor_parallel=3 must divide the 8 GPUs",
        ),
        (
            ["packing=False", "launch.train_nodes=12"],
            ValueError,
            "must split into 3 data-parallel slices",
        ),
        (["launch.engines.nodes=0"], ValueError, "needs launch.engines.nodes > 0"),
        (["launch.context_tokens=20480"], ValueError, "must hold a prompt plus"),
        (["precision.bf16_edge_layers=32"], ValueError, "leaves no FP8 layer of 64"),
    ],
)
def test_bad_overrides_fail_with_the_cause(overrides, error, message):
    with pytest.raises(error, match=message):
        check_recipe(build_recipe("qwen3_32b", overrides))


def test_a_budget_below_the_longest_sample_is_refused_naming_the_budget():
    for name, longest in (("qwen3_8b", 22528), ("tiny_cpu", 64)):
        recipe = build_recipe(name, [f"max_tokens_per_microbatch={longest // 2}"])
        with pytest.raises(ValueError) as refused:
            check_recipe(recipe)
        message = str(refused.value)
        assert message.startswith(f"max_tokens_per_microbatch={longest // 2} is below")
        assert f"launch.context_tokens={longest}" in message
    # without packing the budget is not used: the padded rows are checked instead
    check_recipe(build_recipe("qwen3_8b", ["packing=False", "max_tokens_per_microbatch=1024"]))


def test_a_budget_too_large_for_memory_is_refused_with_the_lever():
    recipe = build_recipe("qwen3_8b", ["max_tokens_per_microbatch=45056"])
    with pytest.raises(LayoutDoesNotFit) as refused:
        check_recipe(recipe)
    assert "max_tokens_per_microbatch below 45056" in str(refused.value)


def test_packing_accepts_what_padded_rows_cannot_split():
    """Packed, 512 samples per mini-batch need not divide by DP (KK balances tokens); rows of
    ``micro_batch_size`` must."""
    plan = check_recipe(build_recipe("qwen3_32b", ["launch.train_nodes=12"]))
    assert plan.fits


def test_qwen3_32b_at_tp1_is_refused_with_its_memory_breakdown():
    recipe = build_recipe(
        "qwen3_32b", ["parallel.tensor_parallel=1", "parallel.sequence_parallel=False"]
    )
    with pytest.raises(LayoutDoesNotFit) as refused:
        check_recipe(recipe)
    message = str(refused.value)
    for part in ("weights (bf16)", "gradients", "activations", "DOES NOT FIT"):
        assert part in message


def test_the_cli_refuses_before_launching_with_status_2():
    done = subprocess.run(
        [sys.executable, "-m", "recipes", "qwen3_8b", "parallel.tensor_parallel=3"]
        + ["--executor", "slurm", "--account", "a", "--container-image", "/i.sqsh", "--dryrun"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("recipes: error: tensor_parallel=3 does not divide num_attention_heads=32")
    )


def test_the_trainer_finds_the_engines_of_its_job():
    recipe = build_recipe("qwen3_8b", ["launch.engines.nodes=2"])
    pointed = with_engines_of_this_job(recipe, {"ENGINE_NODES": "gpu-a,gpu-b"})
    rollout = pointed.config.rollout
    assert rollout.server_urls == tuple(
        f"http://gpu-{h}:{30000 + i}"
        for h in "ab"
        for i in range(4)  # 8 GPUs / TP 2
    )
    assert rollout.server_tp_size == 2 and rollout.weight_backend == "nccl"
    assert not rollout.engines_start_with_run  # disaggregated engines are never released
    assert rollout.master_address == socket.gethostname()  # rank 0 hosts the update group
    with pytest.raises(SystemExit, match="expected the 2 engine hosts"):
        with_engines_of_this_job(recipe, {"ENGINE_NODES": "gpu-a"})


def test_each_engine_task_takes_its_own_gpus_and_port():
    recipe = build_recipe("qwen3_14b")  # engine TP 4: two engines per node
    second = engine_config(recipe, local_id=1, host="10.0.0.7")
    # GPU 0 of what the engine sees: CUDA_VISIBLE_DEVICES holds its own GPUs (engine_gpus).
    assert (second.base_gpu_id, second.port, second.tp_size) == (0, 30001, 4)
    assert second.url == "http://10.0.0.7:30001" and second.dummy_weights
    command = sglang_server_command(second)
    assert command[1:3] == ["-m", "sglang.launch_server"]
    words, flags = command[3:], {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            value = words[i + 1] if i + 1 < len(words) else ""
            flags[word] = "" if value.startswith("--") else value
    assert flags["--tp-size"] == "4" and flags["--base-gpu-id"] == "0"
    assert flags["--host"] == "10.0.0.7" and flags["--port"] == "30001"
    assert flags["--load-format"] == "dummy"
    with pytest.raises(SystemExit, match="a node runs 2 engines"):
        engine_config(recipe, local_id=2, host="10.0.0.7")


@pytest.mark.parametrize(
    ("recipe_name", "local_id", "visible", "expected"),
    [
        ("qwen3_8b", 1, "0,1,2,3,4,5,6,7", "2,3"),  # --gpus-per-node: every task sees 8
        ("qwen3_8b", 3, None, "6,7"),  # no CUDA_VISIBLE_DEVICES: the node's GPUs from 0
        ("qwen3_8b", 2, "4,5", "4,5"),  # Slurm bound the task to its own 2 (--gpu-bind)
        (
            "qwen3_14b",
            1,
            "GPU-a,GPU-b,GPU-c,GPU-d,GPU-e,GPU-f,GPU-g,GPU-h",
            "GPU-e,GPU-f,GPU-g,GPU-h",
        ),
        ("qwen3_32b", 0, "0,1,2,3,4,5,6,7", "0,1,2,3,4,5,6,7"),
    ],
)
def test_each_engine_sees_only_its_own_gpus(recipe_name, local_id, visible, expected):
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert engine_gpus(build_recipe(recipe_name), local_id, environ) == expected


def test_an_engine_that_sees_too_few_gpus_stops_with_what_it_sees():
    with pytest.raises(SystemExit, match="holds neither its 2 GPUs nor the node's 8"):
        engine_gpus(build_recipe("qwen3_8b"), 1, {"CUDA_VISIBLE_DEVICES": "0,1,2"})


def test_the_engine_task_starts_sglang_on_its_slice(monkeypatch):
    """``main`` execs sglang with base GPU 0 and CUDA_VISIBLE_DEVICES set to its slice."""
    started = {}

    def execve(path, argv, env):
        started.update(argv=argv, env=env)

    monkeypatch.setattr(engine_task.os, "execve", execve)
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    engine_task.main(["qwen3_14b"])
    argv = started["argv"]
    assert (
        argv[argv.index("--base-gpu-id") + 1] == "0" and argv[argv.index("--port") + 1] == "30001"
    )
    assert started["env"]["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"


def test_fp8_engines_read_a_config_with_the_blockwise_quantization(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "qwen3", "vocab_size": 60}')
    (hf / "tokenizer.json").write_text("{}")
    recipe = build_recipe("qwen3_8b", [f"base_model={hf}", "rollout.fp8=True"])
    config = engine_config(recipe, local_id=0, host="10.0.0.7", scratch=tmp_path / "scratch")
    model = tmp_path / "scratch" / "fp8-engine-30000"
    assert config.model_path == str(model) and config.fp8
    written = json.loads((model / "config.json").read_text())
    assert written["vocab_size"] == 60
    assert written["quantization_config"]["weight_block_size"] == [128, 128]
    assert written["quantization_config"]["quant_method"] == "fp8"
    assert (model / "tokenizer.json").read_text() == "{}"


def test_engines_load_the_trainers_nccl_when_the_container_names_it():
    from recipes.engine_task import engine_environment

    env = engine_environment({"SGLANG_NCCL_LIBRARY": "/usr/lib/libnccl.so.2", "LD_PRELOAD": "x"})
    assert env["LD_PRELOAD"] == "/usr/lib/libnccl.so.2:x"
    assert "LD_PRELOAD" not in engine_environment({"PATH": "/bin"})
