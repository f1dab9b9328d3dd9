"""The colocated recipes (``recipes/qwen3_colocated.py``): they build and pass their checks with
the planner's phases, keep the paper's hyperparameters, refuse what cannot run colocated, point
the trainer at the engines its own nodes start, and launch on Slurm as one node group."""

import pytest

from megatron_fork.planning import LayoutDoesNotFit
from recipes.checks import check_recipe, rollout_placement
from recipes.colocated_engines import colocated_hosts, engine_launches, start_node_engines
from recipes.qwen3_colocated import SHORT_RESPONSE_OVERRIDES
from recipes.registry import build_recipe
from recipes.train import with_engines_of_this_job
from tests.recipes.sbatch_support import groups, sruns

GIB = 2**30


@pytest.mark.parametrize(
    "name, overrides, gpus, engines",
    [
        ("qwen3_8b_1node", [], 8, 4),
        ("qwen3_8b_1node", ["launch.train_nodes=2"], 16, 8),
        ("qwen3_14b_2node", [], 16, 4),
    ],
)
def test_colocated_recipes_fit_every_phase(name, overrides, gpus, engines):
    recipe = build_recipe(name, overrides)
    plan = check_recipe(recipe)
    assert plan.colocated and not plan.concurrent and plan.fits
    assert set(plan.phases) == {"training", "weight sync", "rollout"}
    assert max(plan.phase_totals.values()) == plan.total <= plan.capacity
    assert plan.capacity - plan.phase_totals["training"] > 10 * GIB  # room for fragmentation
    placement = rollout_placement(recipe)
    assert placement.colocated and placement.release_between_phases
    assert placement.gpus == recipe.launch.world_size == gpus and placement.engines == engines
    assert recipe.launch.engines.nodes == 0 and recipe.config.rollout.placement == "colocated"
    config = recipe.config  # the paper's hyperparameters, as the 16-node recipes
    assert config.rollout.prompts_per_step == 512 and config.rollout.samples_per_prompt == 16
    assert config.rollout.max_new_tokens == 20480 and recipe.launch.context_tokens == 22528
    assert config.loss.rho == 0.2 and config.loss.strategy == "top"
    assert config.optimizer.lr == 1e-6 and config.mini_batches_per_step == 16


def test_the_shorter_response_option_is_explicit_and_checked():
    recipe = build_recipe("qwen3_8b_1node", list(SHORT_RESPONSE_OVERRIDES))
    assert recipe.config.rollout.max_new_tokens == 8192
    assert recipe.config.reward.max_response_tokens == 8192
    assert check_recipe(recipe).fits
    assert build_recipe("qwen3_8b_1node").config.rollout.max_new_tokens == 20480  # not default


def test_an_engine_pool_crowding_out_the_trainer_residue_is_refused():
    recipe = build_recipe("qwen3_8b_1node", ["launch.engines.mem_fraction_static=0.95"])
    with pytest.raises(LayoutDoesNotFit, match=r"(?s)rollout phase total.*DOES NOT FIT"):
        check_recipe(recipe)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["launch.engines.nodes=1"], "set launch.engines.nodes=0"),
        (["rollout.server_urls=('http://x:1',)"], "drop rollout.server_urls"),
        (["launch.engines.tensor_parallel=3"], "tensor_parallel=3 must divide the 8 GPUs"),
    ],
)
def test_what_cannot_run_colocated_is_refused_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_recipe(build_recipe("qwen3_8b_1node", overrides))


def test_the_trainer_points_at_the_engines_of_its_own_nodes():
    recipe = build_recipe("qwen3_8b_1node", ["launch.train_nodes=2"])
    pointed = with_engines_of_this_job(recipe, {"TRAINER_NODES": "gpu-a,gpu-b"})
    rollout = pointed.config.rollout
    assert rollout.server_urls == tuple(
        f"http://gpu-{h}:{30000 + i}"
        for h in "ab"
        for i in range(4)  # 8 GPUs / TP 2
    )
    assert rollout.server_tp_size == 2
    assert rollout.engines_start_with_run  # a requeued job's engines are new
    with pytest.raises(SystemExit, match="expected the 2 training hosts"):
        colocated_hosts(recipe, {"TRAINER_NODES": "gpu-a"})
    one = with_engines_of_this_job(build_recipe("qwen3_8b_1node"), {})  # local executor
    assert one.config.rollout.server_urls[0] == "http://127.0.0.1:30000"
    assert one.config.rollout.master_address == "127.0.0.1"


def test_each_node_starts_its_engines_on_slices_of_the_shared_gpus():
    recipe = build_recipe("qwen3_14b_2node")  # engine TP 4: two engines per node
    launches = engine_launches(recipe, "127.0.0.1", {})
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in launches] == ["0,1,2,3", "4,5,6,7"]
    for index, (command, _) in enumerate(launches):
        assert "--enable-memory-saver" in command  # release/resume around training
        assert command[command.index("--port") + 1] == str(30000 + index)
        assert command[command.index("--mem-fraction-static") + 1] == "0.8"
    vllm = build_recipe("qwen3_8b_1node", ["rollout.backend=vllm", "rollout.weight_backend=nccl"])
    command, env = engine_launches(vllm, "127.0.0.1", {})[0]
    assert "--enable-sleep-mode" in command and env["CUDA_VISIBLE_DEVICES"] == "0,1"
    # only local rank 0 of a node starts them, and only for a colocated recipe
    assert start_node_engines(recipe, {"LOCAL_RANK": "3"}) == []
    assert start_node_engines(build_recipe("qwen3_8b"), {"LOCAL_RANK": "0"}) == []


def test_slurm_script_is_one_node_group_with_the_hosts_and_the_key(sbatch_in_process):
    script = sbatch_in_process("qwen3_8b_1node", "launch.train_nodes=2")
    (trainer,) = groups(script)  # no engine node group: no hetjob
    assert "hetjob" not in script
    assert trainer["nodes"] == "2" and trainer["ntasks-per-node"] == "1"
    assert trainer["gpus-per-node"] == "8" and trainer["exclusive"] == ""
    lines = script.splitlines()
    hosts = 'scontrol show hostnames "$SLURM_JOB_NODELIST" | paste -sd, -'
    assert f"export TRAINER_NODES=$({hosts})" in lines
    assert not any(line.startswith("export ENGINE_NODES=") for line in lines)
    key = next(i for i, line in enumerate(lines) if line.startswith("export SGLANG_API_KEY="))
    assert lines[key - 1].startswith("set +x")  # the engines' key stays out of the log
    runs = sruns(script)
    assert set(runs) == {0}
    options, torchrun = runs[0]
    assert {"TRAINER_NODES", "SGLANG_API_KEY"} <= set(options["container-env"].split(","))
    assert "--nnodes=2" in torchrun and "--nproc-per-node=8" in torchrun
    assert torchrun[-4:] == ["-m", "recipes.train", "qwen3_8b_1node", "launch.train_nodes=2"]
