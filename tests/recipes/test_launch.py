"""The launch path through NeMo-Run: ``--dryrun`` of every Slurm recipe gives an sbatch script
whose node groups, GPUs, container, mounts and commands are right (read by parsing the
script's #SBATCH lines and srun command lines), and the tiny recipe runs to completion
through NeMo-Run's local executor (torchrun, 2 CPU processes, TP=2)."""

import os
import subprocess
import sys

import pytest

from megatron_fork.rl.metrics_log import read_metrics
from recipes.registry import build_recipe
from tests.recipes.sbatch_support import MOUNTS, SLURM_ARGS, groups, sruns

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _dryrun(tmp_path, name: str, *arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "recipes", name, *arguments, *SLURM_ARGS, "--dryrun"]
    command += ["--job-dir", str(tmp_path / "jobs")]
    env = {**ENV, "NEMORUN_HOME": str(tmp_path / "nemo_home")}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _sbatch(tmp_path, name: str, *overrides: str) -> str:
    done = _dryrun(tmp_path, name, *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("#!/bin/bash\n")  # the script alone: `> job.sbatch` works
    return done.stdout


@pytest.mark.parametrize("name", ["qwen3_8b", "qwen3_14b", "qwen3_32b"])
def test_dryrun_sbatch_has_the_recipe_node_groups_and_commands(tmp_path, name):
    recipe = build_recipe(name)
    launch = recipe.launch
    script = _sbatch(tmp_path, name, "loss.strategy=random")
    trainer, engines = groups(script)
    assert trainer["nodes"] == str(launch.train_nodes) and engines["nodes"] == str(
        launch.engines.nodes
    )
    assert trainer["gpus-per-node"] == engines["gpus-per-node"] == "8"
    assert trainer["ntasks-per-node"] == "1"  # one torchrun per node
    assert engines["ntasks-per-node"] == str(8 // launch.engines.tensor_parallel)
    assert trainer["account"] == "acct" and trainer["partition"] == "batch"
    # Five minutes before the time limit Slurm signals the script, which requeues the job.
    assert trainer["signal"] == engines["signal"] == "B:USR1@300"
    lines = script.splitlines()
    assert any(line.startswith("trap ") and "scontrol requeue" in line for line in lines)
    engine_hosts = 'scontrol show hostnames "$SLURM_JOB_NODELIST_HET_GROUP_1" | paste -sd, -'
    assert f"export ENGINE_NODES=$({engine_hosts})" in lines  # engine hosts, for the trainer

    runs = sruns(script)
    assert set(runs) == {0, 1}
    for options, _ in runs.values():
        assert options["container-image"] == "/lustre/img/mf.sqsh"
        assert set(MOUNTS) <= set(options["container-mounts"].split(","))
    torchrun = runs[0][1]
    assert torchrun[:3] == ["python", "-m", "torch.distributed.run"]
    assert f"--nnodes={launch.train_nodes}" in torchrun and "--nproc-per-node=8" in torchrun
    # The first trainer node, by name.
    assert "--rdzv-endpoint=${het_group_host_0:-$head_node}:29500" in torchrun
    assert torchrun[torchrun.index("-m", 3) :] == [
        "-m",
        "recipes.train",
        name,
        "loss.strategy=random",
    ]
    assert runs[1][1] == ["python", "-m", "recipes.engine_task", name, "loss.strategy=random"]


def test_a_recipe_without_engines_is_one_node_group(tmp_path):
    script = _sbatch(tmp_path, "qwen3_8b", "launch.engines.nodes=0", "rollout.engine=torch")
    (trainer,) = groups(script)
    assert trainer["nodes"] == "8" and "hetjob" not in script
    assert set(sruns(script)) == {0}
    # srun in the background under the monitor loop, so the time-limit trap runs in time.
    lines = script.splitlines()
    assert any(line.startswith("srun ") and line.endswith("& pids[0]=$!") for line in lines)
    assert "all_done=false" in lines and any(line.startswith("trap ") for line in lines)


def test_time_limit_requeues_do_not_spend_the_failure_retries(tmp_path):
    script = _sbatch(tmp_path, "qwen3_32b")
    lines = script.splitlines()
    counted = next(line for line in lines if line.startswith("TIME_LIMIT_REQUEUES="))
    counter = counted.split('"')[1]
    assert counter.startswith(str(tmp_path / "jobs"))  # on the shared file system
    trap = next(line for line in lines if line.startswith("trap "))
    assert f'echo >> "{counter}"' in trap and "scontrol requeue" in trap
    retries = lines.index("export TORCHX_MAX_RETRIES=3")
    assert lines.index(counted) > retries  # raises NeMo-Run's budget after it is set
    assert "export TORCHX_MAX_RETRIES=$((TORCHX_MAX_RETRIES + TIME_LIMIT_REQUEUES))" in lines


def test_paths_outside_the_mounts_are_refused_before_launch(tmp_path):
    done = _dryrun(tmp_path, "qwen3_8b", "output_dir=/scratch/run")
    assert done.returncode == 2 and done.stdout == ""
    assert "output_dir=/scratch/run is not under a container mount" in done.stderr


def test_tiny_recipe_runs_to_completion_through_nemo_run_local_executor(base_model, tmp_path):
    out = tmp_path / "run"
    overrides = [
        f"base_model={base_model}",
        f"output_dir={out}",
        "steps=1",
        "parallel.tensor_parallel=2",
        "parallel.vocab_multiple=16",
        "data.synthetic_terms=2",
        "data.synthetic_heldout=20",
        "rollout.prompts_per_step=4",
        "rollout.prompts_per_round=6",
        "rollout.samples_per_prompt=4",
        "rollout.max_new_tokens=16",
        "reward.max_response_tokens=16",
        "reward.overlong_buffer=4",
        "reward.num_workers=1",
        "micro_batch_size=4",
        "eval.max_prompts=8",
        "eval.samples_per_prompt=2",
        "progress=False",
    ]
    command = [sys.executable, "-m", "recipes", "tiny_cpu", "--nproc", "2", *overrides]
    env = {**ENV, "NEMORUN_HOME": str(tmp_path / "nemo_home")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [0, 1]
    assert metrics[1]["train/engine_logprob_abs_diff"] < 1e-5
    assert (out / "checkpoints" / "latest").read_text() == "step_00000001"
    assert (tmp_path / "nemo_home" / "experiments").is_dir()  # it went through NeMo-Run
