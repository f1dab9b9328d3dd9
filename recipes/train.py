"""What every training process of a launched recipe runs (under torchrun, locally or on Slurm):

    python -m recipes.train <recipe> [section.field=value ...]

The recipe is rebuilt here from its name and overrides, so the launcher ships no config file.
With engines on their own Slurm node group (``launch.engines.nodes``), their URLs come from
``ENGINE_NODES`` (the job's engine hosts, exported by the sbatch script) and the weight-update
store is hosted on this node (rank 0's)."""

import dataclasses
import os
import socket
import sys
import warnings

from megatron_fork.trainer.overrides import apply_overrides
from recipes.recipe import Recipe
from recipes.registry import build_recipe

ENGINE_NODES = "ENGINE_NODES"


def engine_urls(recipe: Recipe, hosts: list[str]) -> list[str]:
    """Engine i of a node listens on port + i (``recipes.engine_task``)."""
    port = recipe.launch.engines.port
    return [f"http://{h}:{port + i}" for h in hosts for i in range(recipe.launch.engines_per_node)]


def with_engines_of_this_job(recipe: Recipe, environ=os.environ) -> Recipe:
    """The recipe pointed at the job's engines (a no-op without an engine node group)."""
    if not recipe.launch.engines.nodes:
        return recipe
    hosts = [h for h in environ.get(ENGINE_NODES, "").split(",") if h]
    if len(hosts) != recipe.launch.engines.nodes:
        raise SystemExit(
            f"{ENGINE_NODES}={environ.get(ENGINE_NODES)!r}: expected the "
            f"{recipe.launch.engines.nodes} engine hosts of this job (comma-separated)"
        )
    urls = ",".join(repr(u) for u in engine_urls(recipe, hosts))
    config = apply_overrides(
        recipe.config,
        [
            f"rollout.server_urls=({urls},)",
            f"rollout.server_tp_size={recipe.launch.engines.tensor_parallel}",
            f"rollout.master_address={socket.gethostname()}",
        ],
    )
    return dataclasses.replace(recipe, config=config)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: python -m recipes.train <recipe> [section.field=value ...]")
    warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")
    recipe = with_engines_of_this_job(build_recipe(argv[0], argv[1:]))
    from megatron_fork.trainer.rl_loop import run_rl

    run_rl(recipe.config)


if __name__ == "__main__":
    main()
