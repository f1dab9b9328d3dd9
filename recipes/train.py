"""What every training process of a launched recipe runs (under torchrun, locally or on Slurm):

    python -m recipes.train <recipe> [section.field=value ...]

The recipe is rebuilt here from its name and overrides, so the launcher ships no config file.
With engines on their own Slurm node group (``launch.engines.nodes``), their URLs come from
``ENGINE_NODES`` (the job's engine hosts, exported by the sbatch script) and the weight-update
store is hosted on this node (rank 0's). A colocated recipe's engines run on the training nodes:
local rank 0 of each node starts them (``recipes.colocated_engines``)."""

import os
import socket
import sys
import warnings

from recipes.colocated_engines import (
    colocated_hosts,
    start_node_engines,
    stop_engines,
)
from recipes.colocation import is_colocated
from recipes.engine_urls import with_engines
from recipes.recipe import Recipe
from recipes.registry import build_recipe

ENGINE_NODES = "ENGINE_NODES"


def with_engines_of_this_job(recipe: Recipe, environ=os.environ) -> Recipe:
    """The recipe pointed at the job's engines (a no-op without an engine node group or
    colocated engines)."""
    if is_colocated(recipe):
        hosts = colocated_hosts(recipe, environ)
        master = hosts[0] if len(hosts) == 1 else socket.gethostname()  # rank 0's node
        return with_engines(recipe, hosts, master, start_with_run=True)  # new in every run
    if not recipe.launch.engines.nodes:
        return recipe
    hosts = [h for h in environ.get(ENGINE_NODES, "").split(",") if h]
    if len(hosts) != recipe.launch.engines.nodes:
        raise SystemExit(
            f"{ENGINE_NODES}={environ.get(ENGINE_NODES)!r}: expected the "
            f"{recipe.launch.engines.nodes} engine hosts of this job (comma-separated)"
        )
    return with_engines(recipe, hosts, socket.gethostname())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: python -m recipes.train <recipe> [section.field=value ...]")
    warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")
    recipe = with_engines_of_this_job(build_recipe(argv[0], argv[1:]))
    from megatron_fork.rl.rl_loop import run_rl

    engines = start_node_engines(recipe)  # colocated: this node's, before the model is built
    try:
        run_rl(recipe.config)
    finally:
        stop_engines(engines)


if __name__ == "__main__":
    main()
