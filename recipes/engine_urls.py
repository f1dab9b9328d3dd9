"""Where the trainer finds the job's engines: engine i of a node listens on port + i
(``recipes.engine_task``, ``recipes.colocated_engines``); the recipe pointed at them."""

import dataclasses

from megatron_fork.rl.overrides import apply_overrides
from recipes.recipe import Recipe


def engine_urls(recipe: Recipe, hosts: list[str]) -> list[str]:
    port = recipe.launch.engines.port
    return [f"http://{h}:{port + i}" for h in hosts for i in range(recipe.launch.engines_per_node)]


def with_engines(
    recipe: Recipe, hosts: list[str], master_address: str, start_with_run: bool = False
) -> Recipe:
    """The recipe's rollout pointed at the engines of ``hosts``; ``master_address``: where the
    stage leaders host their weight-update groups' stores; ``start_with_run``: the job starts
    them itself (colocated), so nothing in them is left released by an earlier run."""
    urls = ",".join(repr(u) for u in engine_urls(recipe, hosts))
    config = apply_overrides(
        recipe.config,
        [
            f"rollout.server_urls=({urls},)",
            f"rollout.server_tp_size={recipe.launch.engines.tensor_parallel}",
            f"rollout.master_address={master_address}",
            f"rollout.engines_start_with_run={start_with_run}",
        ],
    )
    return dataclasses.replace(recipe, config=config)
