"""The node kit's pieces that need no GPU: how each Qwen3 recipe is cut down to one node, that
the overrides the kit hands ``recipes.train`` build each recipe as intended, the engine's
command line, and the random model converting on the CPU through the real converter CLI."""

import json
import time

import pytest

from megatron_fork.planning import QWEN3_SIZES, ModelSize
from recipes.registry import RECIPES, build_recipe
from tools.gpu_checks.core import CheckFailed
from tools.gpu_checks.kit_layout import (
    KIT_LAYERS,
    KIT_VOCAB,
    KitLayout,
    kit_layout,
    kit_recipes,
    recipe_kit_layout,
)

QWEN3 = ["qwen3_8b", "qwen3_14b", "qwen3_32b"]


def test_each_qwen3_recipe_is_cut_to_half_a_node_plus_one_engine():
    """Every disaggregated Qwen3 recipe (the colocated ones have their own kit check,
    ``colocated_1node``)."""
    disaggregated = [
        n
        for n in RECIPES
        if n.startswith("qwen3") and build_recipe(n).config.rollout.placement == "disaggregated"
    ]
    assert kit_recipes() == QWEN3 == disaggregated
    assert recipe_kit_layout("qwen3_8b") == KitLayout(2, 1, 2, 2)  # the recipe's own TP2 x CP2
    assert recipe_kit_layout("qwen3_14b") == KitLayout(4, 1, 1, 4)  # CP dropped, TP kept
    assert recipe_kit_layout("qwen3_32b") == KitLayout(2, 2, 1, 4)  # PP=2 kept, TP 8 -> 2
    for name in QWEN3:
        layout, size = recipe_kit_layout(name), QWEN3_SIZES[name]
        assert layout.train_gpus <= 4 and layout.gpus <= 8
        assert layout.train_gpus % layout.engine_tensor_parallel == 0  # engine GPUs aligned
        for tp in (layout.tensor_parallel, layout.engine_tensor_parallel):
            assert size.num_query_groups % tp == 0 and size.ffn_hidden_size % tp == 0
        assert KIT_LAYERS % layout.pipeline_parallel == 0 and KIT_VOCAB % (128 * 8) == 0


def test_the_layout_rule_follows_the_built_recipes():
    """The kit reads the planner's layouts (no torch at --list); the recipes are built from
    the same: both give the same cut."""
    for name in QWEN3:
        recipe = build_recipe(name)
        p = recipe.config.parallel
        engine = recipe.launch.engines.tensor_parallel
        expected = kit_layout(p.tensor_parallel, p.pipeline_parallel, p.context_parallel, engine)
        assert recipe_kit_layout(name) == expected
    assert kit_layout(8, 4, 2, 8) == KitLayout(2, 2, 1, 4)  # PP capped at 2 as well
    with pytest.raises(ValueError, match="does not fit"):
        kit_layout(2, 2, 1, 2, node_gpus=4)


@pytest.mark.parametrize("name", QWEN3)
def test_the_kit_overrides_build_each_recipe_as_intended(name, tmp_path):
    from megatron_fork.rl.train_batch import check_batch_layout
    from recipes.train import with_engines_of_this_job
    from tools.gpu_checks.qwen3_check import trainer_overrides

    layout = recipe_kit_layout(name)
    url = "http://127.0.0.1:31234"
    overrides = trainer_overrides(layout, tmp_path / "mcore", tmp_path / "run", url, steps=2)
    recipe = build_recipe(name, overrides)
    assert with_engines_of_this_job(recipe, environ={}) is recipe  # no Slurm engine group
    c = recipe.config
    assert (c.parallel.tensor_parallel, c.parallel.pipeline_parallel) == (
        layout.tensor_parallel,
        layout.pipeline_parallel,
    )
    assert c.parallel.context_parallel == layout.context_parallel
    assert c.parallel.distributed_optimizer and c.parallel.sequence_parallel
    assert (c.precision.params, c.precision.fp8, c.precision.bf16_edge_layers) == (
        "bf16",
        "e4m3",
        0,
    )
    assert c.rollout.server_urls == (url,) and c.rollout.weight_backend == "nccl"
    assert c.rollout.server_tp_size == layout.engine_tensor_parallel
    assert c.steps == 2 and c.base_model == str(tmp_path / "mcore")
    assert not c.dynamic_sampling.enabled and c.loss.entropy_coef > 0
    samples = c.rollout.prompts_per_step * c.rollout.samples_per_prompt
    check_batch_layout(samples, c.mini_batches_per_step, c.micro_batch_size, 1)  # DP = 1


def test_the_tiny_demo_overrides_build_the_cpu_default_in_bf16(tmp_path):
    from tools.gpu_checks.tiny_demo import overrides

    config = build_recipe("tiny_cpu", overrides(tmp_path / "base", tmp_path / "run")).config
    assert (config.steps, config.precision.params, config.rollout.engine) == (2, "bf16", "torch")
    assert config.base_model == str(tmp_path / "base")


def test_the_engine_is_launched_as_the_recipe_launches_it_on_the_gpus_after_the_trainer(
    tmp_path, monkeypatch
):
    from tools.gpu_checks.engine import engine_launch

    monkeypatch.setenv("SGLANG_PYTHON", "/opt/sglang/bin/python")
    monkeypatch.setenv("SGLANG_NCCL_LIBRARY", "/usr/lib/libnccl.so.2")
    layout = recipe_kit_layout("qwen3_32b")
    command, env = engine_launch("qwen3_32b", layout, tmp_path / "hf", 31999, tmp_path / "s")
    assert command[:3] == ["/opt/sglang/bin/python", "-m", "sglang.launch_server"]
    flags = dict(zip(command, [*command[1:], None], strict=True))  # flag -> what follows it
    assert flags["--model-path"] == str(tmp_path / "hf")
    assert (flags["--host"], flags["--port"]) == ("127.0.0.1", "31999")
    assert (flags["--tp-size"], flags["--base-gpu-id"]) == ("4", "4")
    assert flags["--load-format"] == "dummy" and "--enable-deterministic-inference" in command
    assert env["LD_PRELOAD"].startswith("/usr/lib/libnccl.so.2")


def test_the_random_model_converts_on_the_cpu_through_the_real_cli(tmp_path):
    """The kit's model writer and converter command, at a tiny width and TP=2 (2 gloo
    processes): the checkpoint and its hf/ files are there, with the kit's config."""
    from megatron_fork.trainer.checkpoint import hf_metadata_dir, is_megatron_checkpoint
    from tools.gpu_checks.kit_model import write_random_qwen3
    from tools.gpu_checks.processes import run_logged
    from tools.gpu_checks.qwen3_check import convert_command

    size = ModelSize(
        64, 36, 4, 2, 16, 96, 151936, False
    )  # widths only: layers and vocab are the kit's
    hf = write_random_qwen3(tmp_path / "hf", size, layers=2, vocab=256)
    out, layout = tmp_path / "mcore", KitLayout(2, 1, 1, 1)
    env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    run_logged(
        convert_command(hf, out, layout), tmp_path / "convert.log", time.monotonic() + 120, env
    )
    assert is_megatron_checkpoint(out)
    config = json.loads((hf_metadata_dir(out) / "config.json").read_text())
    assert (config["num_hidden_layers"], config["vocab_size"], config["hidden_size"]) == (
        2,
        256,
        64,
    )
    assert (config["eos_token_id"], config["pad_token_id"]) == (1, 0)
    assert (hf_metadata_dir(out) / "tokenizer.json").is_file()


def _group_line(tp_rank: int, stage: int, backend: str = "nccl") -> str:
    """sglang 0.5.15's ``ModelRunner.init_weights_update_group`` INFO line (model_runner.py)."""
    return (
        f"[2026-12-06 04:00:00 TP{tp_rank}] init custom process group: master_address=127.0.0.1, "
        f"master_port=41234, rank_offset=1, rank={1 + tp_rank}, world_size=5, "
        f"group_name=weight_update_group_stage{stage}_0123456789ab, backend={backend}\n"
    )


def test_the_pipeline_check_reads_both_stages_groups_from_the_engine_log(tmp_path):
    from megatron_fork.rollout.sglang_protocol import DEFAULT_GROUP_NAME
    from tools.gpu_checks.qwen3_check import check_stage_groups

    assert DEFAULT_GROUP_NAME == "weight_update_group"  # the trainer's groups' prefix
    log = tmp_path / "engine.log"
    both = [_group_line(r, s) for s in (0, 1) for r in range(4)]
    log.write_text("loading\n" + "".join(both))
    assert check_stage_groups(log, 2, 4) == "stage 0: 4 x nccl, stage 1: 4 x nccl"
    log.write_text("".join(_group_line(r, 0) for r in range(4)))  # stage 1 never joined
    with pytest.raises(CheckFailed, match="stage 1: the engine's TP ranks joined no"):
        check_stage_groups(log, 2, 4)
    log.write_text("".join(_group_line(r, s, "gloo") for s in (0, 1) for r in range(4)))
    with pytest.raises(CheckFailed, match=r"stage 0: .*\['gloo'"):
        check_stage_groups(log, 2, 4)
