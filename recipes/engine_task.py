"""One rollout engine per Slurm task of the engine node group, sglang or vLLM as the recipe's
``rollout.backend`` says (the trainer reads the same recipe and overrides):

    python -m recipes.engine_task <recipe> [section.field=value ...]

Task i of a node (``SLURM_LOCALID``) serves on GPUs [i * TP, (i + 1) * TP) of the node at
port + i (it sets its own ``CUDA_VISIBLE_DEVICES`` to them, so the engine's GPU 0 is its first),
with dummy weights the trainer's first sync replaces. The engine reads config and tokenizer from
the base model's Hugging Face files (a Megatron checkpoint's ``hf/``).

- sglang runs in ``SGLANG_PYTHON`` (the container's sglang environment), else this interpreter,
  on every interface of the node: its API key (``SGLANG_API_KEY``) guards every route.
- vLLM runs in ``VLLM_PYTHON`` (the container's vLLM environment), else this interpreter, on one
  private address (``recipes.engine_address``: ``ENGINE_BIND_INTERFACE``, or the node's
  hostname resolved), never every interface: its API key (``VLLM_API_KEY``) guards generation
  only, not the control routes."""

import os
import sys
import tempfile
from pathlib import Path

from megatron_fork.rollout.sglang_launch import (
    SglangEngineConfig,
    fp8_engine_model,
    sglang_server_command,
)
from megatron_fork.rollout.vllm_launch import (
    VllmEngineConfig,
    vllm_server_command,
    vllm_server_environment,
)
from megatron_fork.trainer.checkpoint import hf_metadata_dir
from recipes.engine_address import engine_bind_address, warn_if_hostname_differs
from recipes.recipe import Recipe
from recipes.registry import build_recipe

ENGINE_BIND_HOST = "0.0.0.0"
"""sglang engines serve the trainer's nodes over the cluster network; a node's own hostname may
resolve to a loopback or another interface than the one the trainer reaches it by. The Slurm job
sets SGLANG_API_KEY (a key per job, or ``--api-key-file``): every caller must present it."""


def engine_model_path(recipe: Recipe, local_id: int, scratch: Path | None = None) -> Path:
    """The model folder of engine ``local_id`` (either backend). FP8 engines read a config with
    the blockwise ``quantization_config``, written to ``scratch`` (node-local: a temporary
    directory)."""
    if not 0 <= local_id < recipe.launch.engines_per_node:
        raise SystemExit(
            f"SLURM_LOCALID={local_id}: a node runs {recipe.launch.engines_per_node} engines"
        )
    model_path = hf_metadata_dir(recipe.config.base_model)
    if recipe.config.rollout.fp8:
        scratch = scratch or Path(tempfile.gettempdir())
        port = recipe.launch.engines.port + local_id
        model_path = fp8_engine_model(model_path, scratch / f"fp8-engine-{port}")
    return Path(model_path)


def engine_config(
    recipe: Recipe, local_id: int, host: str, scratch: Path | None = None, environ=os.environ
) -> SglangEngineConfig:
    """sglang engine ``local_id`` of this node."""
    engines = recipe.launch.engines
    model_path = engine_model_path(recipe, local_id, scratch)
    return SglangEngineConfig(
        model_path=str(model_path),
        host=host,
        port=engines.port + local_id,
        tp_size=engines.tensor_parallel,
        base_gpu_id=0,  # CUDA_VISIBLE_DEVICES holds this engine's GPUs only (engine_gpus)
        mem_fraction_static=engines.mem_fraction_static,
        fp8=recipe.config.rollout.fp8,
        random_seed=recipe.config.seed,
        api_key=environ.get("SGLANG_API_KEY"),
        python=environ.get("SGLANG_PYTHON", sys.executable),
    )


def vllm_engine_config(
    recipe: Recipe, local_id: int, host: str, environ, scratch: Path | None = None
) -> VllmEngineConfig:
    """vLLM engine ``local_id`` of this node, listening on ``host`` only (a private address)."""
    engines = recipe.launch.engines
    return VllmEngineConfig(
        model_path=str(engine_model_path(recipe, local_id, scratch)),
        host=host,
        port=engines.port + local_id,
        tp_size=engines.tensor_parallel,
        gpu_memory_utilization=engines.gpu_memory_utilization,
        max_model_len=recipe.launch.context_tokens,
        fp8=recipe.config.rollout.fp8,
        random_seed=recipe.config.seed,
        batch_invariant=engines.batch_invariant,
        api_key=environ.get("VLLM_API_KEY"),
        python=environ.get("VLLM_PYTHON", sys.executable),
    )


def engine_gpus(recipe: Recipe, local_id: int, environ) -> str:
    """``CUDA_VISIBLE_DEVICES`` for engine ``local_id`` of this node: its slice of what the task
    sees when Slurm shows every task all the node's GPUs (``--gpus-per-node``), or all it sees
    when Slurm already bound the task to its own (``--gpu-bind``, ``SLURM_GPU_BIND``). Without
    ``CUDA_VISIBLE_DEVICES`` every GPU of the node is visible, numbered from 0."""
    tp, node = recipe.launch.engines.tensor_parallel, recipe.launch.gpus_per_node
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [str(i) for i in range(node)] if visible is None else visible.split(",")
    gpus = [gpu.strip() for gpu in gpus if gpu.strip()]
    if len(gpus) == tp:
        return ",".join(gpus)
    if len(gpus) >= recipe.launch.engines_per_node * tp:
        return ",".join(gpus[local_id * tp : (local_id + 1) * tp])
    raise SystemExit(
        f"engine {local_id}: CUDA_VISIBLE_DEVICES={visible!r} holds neither its {tp} GPUs nor "
        f"the node's {node}"
    )


def engine_environment(environ) -> dict[str, str]:
    """The engine's environment: with ``SGLANG_NCCL_LIBRARY`` (the container sets it), sglang's
    torch loads the trainer's NCCL instead of its own wheel's, since the NCCL weight-update
    group refuses members of different NCCL versions."""
    env = dict(environ)
    library = env.get("SGLANG_NCCL_LIBRARY")
    if library:
        env["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD")) if p)
    return env


def engine_launch(recipe: Recipe, local_id: int, environ) -> tuple[list[str], dict]:
    """Command line and environment of this node's engine ``local_id``, for the recipe's
    ``rollout.backend``, on its own GPUs."""
    if recipe.config.rollout.backend == "vllm":
        host = engine_bind_address(environ)
        warn_if_hostname_differs(host)
        config = vllm_engine_config(recipe, local_id, host, environ)
        command, env = vllm_server_command(config), vllm_server_environment(environ, config)
    else:
        config = engine_config(recipe, local_id, ENGINE_BIND_HOST, environ=environ)
        command, env = sglang_server_command(config), engine_environment(environ)
    env["CUDA_VISIBLE_DEVICES"] = engine_gpus(recipe, local_id, environ)
    return command, env


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: python -m recipes.engine_task <recipe> [section.field=value ...]")
    recipe = build_recipe(argv[0], argv[1:])
    local_id = int(os.environ.get("SLURM_LOCALID", "0"))
    command, env = engine_launch(recipe, local_id, os.environ)
    print(f"engine_task: {recipe.config.rollout.backend} engine {local_id}", file=sys.stderr)
    # The Slurm task becomes the engine (signals reach it).
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
