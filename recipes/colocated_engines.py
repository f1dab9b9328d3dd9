"""Starting a colocated recipe's engines (``rollout.placement=colocated``): the trainer's local
rank 0 of every node starts that node's engines, one per ``launch.engines.tensor_parallel``
GPUs, before the trainer builds its model; every rank's recipe points at all of the job's
engines (``server_urls``), which rank 0 waits for as for any running engines.

Why from the trainer and not as Slurm tasks of their own: slime, verl and NeMo-RL all start
colocated engines from the training job's own control plane, on the GPUs the trainer holds
(slime: engines placed in the actor's placement group, ``slime/ray/placement_group.py:114-115``;
verl: the rollout engine lives in the actor worker, ``rollout_mode`` in
``verl/workers/megatron_workers.py:676``; NeMo-RL: vLLM workers in the policy's placement
groups when ``generation.colocated.enabled``, ``nemo_rl/algorithms/grpo.py:726``). A second
Slurm step on the same GPUs would need ``srun --overlap`` and a second container per node,
and would outlive a dead trainer; a child of local rank 0 dies with it (``PR_SET_PDEATHSIG``)
and a requeued job starts both again. The local executor runs the same path (torchrun on one
GPU node: loopback engines).

Engines bind loopback on a one-node job; across nodes sglang binds every interface behind the
job's API key (``SGLANG_API_KEY``, as the engine node group does) and vLLM one private address
(``recipes.engine_address``)."""

import dataclasses
import os
import signal
import subprocess
import sys

from megatron_fork.rollout.sglang_launch import sglang_server_command
from megatron_fork.rollout.vllm_launch import vllm_server_command, vllm_server_environment
from recipes.colocation import TRAINER_NODES, is_colocated
from recipes.engine_address import engine_bind_address
from recipes.engine_task import (
    ENGINE_BIND_HOST,
    engine_config,
    engine_environment,
    engine_gpus,
    vllm_engine_config,
)
from recipes.recipe import Recipe

LOOPBACK = "127.0.0.1"


def colocated_hosts(recipe: Recipe, environ) -> list[str]:
    """The job's nodes (``TRAINER_NODES``, exported by the sbatch script), or this node alone
    (loopback) for a one-node run without it (the local executor)."""
    hosts = [h for h in environ.get(TRAINER_NODES, "").split(",") if h]
    nodes = recipe.launch.train_nodes
    if not hosts and nodes == 1:
        return [LOOPBACK]
    if len(hosts) != nodes:
        raise SystemExit(
            f"{TRAINER_NODES}={environ.get(TRAINER_NODES)!r}: expected the {nodes} training "
            "hosts of this job (comma-separated), where the colocated engines run"
        )
    return [LOOPBACK] if nodes == 1 else hosts


def engine_launches(recipe: Recipe, host: str, environ) -> list[tuple[list[str], dict]]:
    """Command and environment of each engine of this node, listening on ``host``, with the
    memory-release switch colocated engines need (sglang ``--enable-memory-saver``, vLLM
    ``--enable-sleep-mode``) and ``CUDA_VISIBLE_DEVICES`` = its slice of the node's GPUs."""
    launches = []
    for local_id in range(recipe.launch.engines_per_node):
        if recipe.config.rollout.backend == "vllm":
            base = vllm_engine_config(recipe, local_id, host, environ)
            config = dataclasses.replace(base, colocated=True)
            command, env = vllm_server_command(config), vllm_server_environment(environ, config)
        else:
            base = engine_config(recipe, local_id, host, environ=environ)
            config = dataclasses.replace(base, colocated=True)
            command, env = sglang_server_command(config), engine_environment(environ)
        env["CUDA_VISIBLE_DEVICES"] = engine_gpus(recipe, local_id, environ)
        launches.append((command, env))
    return launches


def bind_host(recipe: Recipe, environ) -> str:
    if recipe.launch.train_nodes == 1:
        return LOOPBACK
    if recipe.config.rollout.backend == "vllm":
        return engine_bind_address(environ)
    return ENGINE_BIND_HOST


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when local rank 0 dies."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_node_engines(recipe: Recipe, environ=os.environ) -> list[subprocess.Popen]:
    """On local rank 0 of a colocated recipe: this node's engines, started (not waited for:
    rank 0 waits for every engine of the job). Elsewhere: none."""
    if not is_colocated(recipe) or environ.get("LOCAL_RANK", "0") != "0":
        return []
    processes = []
    for command, env in engine_launches(recipe, bind_host(recipe, environ), environ):
        processes.append(subprocess.Popen(command, env=env, preexec_fn=_die_with_parent))
    print(f"colocated: started {len(processes)} engine(s) on this node", file=sys.stderr)
    return processes


def stop_engines(processes: list[subprocess.Popen], timeout_s: float = 30.0) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
