"""The commands a launched recipe runs, as NeMo-Run scripts: ``recipes.train`` (under
torchrun) on the trainer nodes and ``recipes.engine_task`` on the engine nodes. Both rebuild
the recipe from its name and overrides on the node."""

import sys

import nemo_run as run

from recipes.launch.shell import script_words
from recipes.recipe import Recipe

RENDEZVOUS_PORT = 29500
RANK_LOGS = "/nemo_run/rank-logs"
"""torchrun's copy of each rank's output, inside NeMo-Run's job folder (mounted at /nemo_run):
``<job folder>/rank-logs/<job id>_<random>/attempt_0/<local rank>/{stdout,stderr}.log``."""


def local_trainer_task(name: str, overrides: list[str], nproc: int) -> run.Script:
    """This interpreter (the one with the project installed: a venv need not be on PATH),
    under torchrun's module when there are several processes."""
    train = [name, *overrides]
    if nproc == 1:
        return run.Script(path="recipes.train", entrypoint=sys.executable, m=True, args=train)
    torchrun = ["--standalone", f"--nproc-per-node={nproc}", "-m", "recipes.train"]
    return run.Script(
        path="torch.distributed.run", entrypoint=sys.executable, m=True, args=[*torchrun, *train]
    )


def slurm_trainer_task(
    recipe: Recipe, name: str, overrides: list[str], rendezvous_timeout_s: int
) -> run.Script:
    """torchrun once per trainer node, rendezvous on the first trainer node by name (NeMo-Run's
    ``het_group_host_0`` in a heterogeneous job, else the job's head node; ``$head_node_ip``
    may list several addresses). Nodes start torchrun as their container is ready, so both the
    join and the store connection wait ``rendezvous_timeout_s`` (c10d's defaults: 600 s to
    join, 60 s to reach the first node's store). Overrides are quoted for the script."""
    launch = recipe.launch
    timeout = rendezvous_timeout_s
    torchrun = [
        f"--nnodes={launch.train_nodes}",
        f"--nproc-per-node={launch.gpus_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=${{het_group_host_0:-$head_node}}:{RENDEZVOUS_PORT}",
        "--rdzv-id=$SLURM_JOB_ID",
        f"--rdzv-conf=join_timeout={timeout},read_timeout={timeout}",
        f"--log-dir={RANK_LOGS}",
        "--tee=3",
    ]
    return run.Script(
        path="torch.distributed.run",
        entrypoint="python",
        m=True,
        args=[*torchrun, "-m", "recipes.train", *script_words([name, *overrides])],
    )


def slurm_engine_task(name: str, overrides: list[str]) -> run.Script:
    return run.Script(
        path="recipes.engine_task",
        entrypoint="python",
        m=True,
        args=script_words([name, *overrides]),
    )
