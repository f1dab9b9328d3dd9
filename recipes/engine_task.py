"""One sglang engine per Slurm task of the engine node group:

    python -m recipes.engine_task <recipe> [section.field=value ...]

Task i of a node (``SLURM_LOCALID``) serves on GPUs [i * TP, (i + 1) * TP) at port + i, bound
to this node's address on the cluster network (the trainer runs on other nodes), with dummy
weights the trainer's first sync replaces. The engine reads config and tokenizer from the base
model's Hugging Face files (a Megatron checkpoint's ``hf/``); sglang runs in the interpreter
``SGLANG_PYTHON`` names (the container's sglang environment), else this one."""

import os
import socket
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


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: python -m recipes.engine_task <recipe> [section.field=value ...]")
    recipe = build_recipe(argv[0], argv[1:])
    host = socket.gethostbyname(socket.gethostname())
    config = engine_config(recipe, int(os.environ.get("SLURM_LOCALID", "0")), host)
    command = sglang_server_command(config)
    os.execv(command[0], command)  # the Slurm task becomes the engine (signals reach it)


if __name__ == "__main__":
    main()
