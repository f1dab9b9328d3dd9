"""A colocated recipe (``rollout.placement=colocated``): its engines run on the training nodes,
sharing the GPUs, and are started by the job itself (``recipes.colocated_engines``), so it has
no engine node group and no ``server_urls``. The rules here are checked before a launch; the
memory of each phase is the planner's (``megatron_fork.planning.colocation``)."""

from recipes.recipe import Recipe

TRAINER_NODES = "TRAINER_NODES"
TRAINER_HOSTS_LINE = (
    f'export {TRAINER_NODES}=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | paste -sd, -)'
)
"""The job's nodes, where the colocated engines run, for ``recipes.train`` (set in the sbatch
script before the tasks start)."""


def is_colocated(recipe: Recipe) -> bool:
    return recipe.config.rollout.placement == "colocated"


def colocated_engine_count(recipe: Recipe) -> int:
    """One engine per ``launch.engines.tensor_parallel`` GPUs of every training node."""
    return recipe.launch.world_size // recipe.launch.engines.tensor_parallel


def check_colocated(recipe: Recipe) -> None:
    """Raise ValueError naming the key to change when a colocated recipe cannot run as one."""
    if not is_colocated(recipe):
        return
    launch, rollout = recipe.launch, recipe.config.rollout
    if launch.engines.nodes:
        raise ValueError(
            f"rollout.placement=colocated runs the engines on the {launch.train_nodes} training "
            f"node(s): set launch.engines.nodes=0 (got {launch.engines.nodes}), or "
            "rollout.placement=disaggregated"
        )
    if rollout.engine != "server":
        raise ValueError("rollout.placement=colocated needs rollout.engine=server")
    if rollout.server_urls:
        raise ValueError(
            "rollout.placement=colocated starts its own engines on the training GPUs: drop "
            "rollout.server_urls (or use rollout.placement=disaggregated for running engines)"
        )
    tp = launch.engines.tensor_parallel
    if launch.gpus_per_node % tp:
        raise ValueError(
            f"launch.engines.tensor_parallel={tp} must divide the {launch.gpus_per_node} GPUs "
            "of a node: colocated engines never span nodes"
        )
