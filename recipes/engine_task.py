"""One sglang engine per Slurm task of the engine node group:

    python -m recipes.engine_task <recipe> [section.field=value ...]

Task i of a node (``SLURM_LOCALID``) serves on GPUs [i * TP, (i + 1) * TP) at port + i, on
every interface of the node (the trainer runs on other nodes), with dummy
weights the trainer's first sync replaces. The engine reads config and tokenizer from the base
model's Hugging Face files (a Megatron checkpoint's ``hf/``); sglang runs in the interpreter
``SGLANG_PYTHON`` names (the container's sglang environment), else this one."""

import os
import sys
import tempfile
from pathlib import Path

from megatron_fork.rollout.sglang_launch import (
    SglangEngineConfig,
    fp8_engine_model,
    sglang_server_command,
)
from megatron_fork.trainer.checkpoint import hf_metadata_dir
from recipes.recipe import Recipe
from recipes.registry import build_recipe

ENGINE_BIND_HOST = "0.0.0.0"
"""Engines serve the trainer's nodes over the cluster network; a node's own hostname may resolve
to a loopback or another interface than the one the trainer reaches it by. Set SGLANG_API_KEY
(``--env``) to require a key of every caller."""


def engine_config(
    recipe: Recipe, local_id: int, host: str, scratch: Path | None = None
) -> SglangEngineConfig:
    """Engine ``local_id`` of this node. FP8 engines read a config with the blockwise
    ``quantization_config``, written to ``scratch`` (node-local: a temporary directory)."""
    engines = recipe.launch.engines
    if not 0 <= local_id < recipe.launch.engines_per_node:
        raise SystemExit(
            f"SLURM_LOCALID={local_id}: a node runs {recipe.launch.engines_per_node} engines"
        )
    model_path = hf_metadata_dir(recipe.config.base_model)
    if recipe.config.rollout.fp8:
        scratch = scratch or Path(tempfile.gettempdir())
        model_path = fp8_engine_model(model_path, scratch / f"fp8-engine-{engines.port + local_id}")
    return SglangEngineConfig(
        model_path=str(model_path),
        host=host,
        port=engines.port + local_id,
        tp_size=engines.tensor_parallel,
        base_gpu_id=local_id * engines.tensor_parallel,
        mem_fraction_static=engines.mem_fraction_static,
        fp8=recipe.config.rollout.fp8,
        random_seed=recipe.config.seed,
        api_key=os.environ.get("SGLANG_API_KEY"),
        python=os.environ.get("SGLANG_PYTHON", sys.executable),
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


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: python -m recipes.engine_task <recipe> [section.field=value ...]")
    recipe = build_recipe(argv[0], argv[1:])
    config = engine_config(recipe, int(os.environ.get("SLURM_LOCALID", "0")), ENGINE_BIND_HOST)
    command = sglang_server_command(config)
    # The Slurm task becomes the engine (signals reach it).
    os.execve(command[0], command, engine_environment(os.environ))


if __name__ == "__main__":
    main()
