"""NeMo-Run's Slurm executors for a recipe: a trainer node group, plus an engine node group in
the same heterogeneous job when the recipe has engines. (Locally a plain ``LocalExecutor``
runs ``tasks.local_trainer_task``, which brings its own torchrun.)"""

import nemo_run as run

from recipes.launch.slurm_options import SlurmOptions
from recipes.recipe import Recipe

TRAINER_ENV = {
    # Megatron-Core's TP/SP communication overlap relies on one CUDA work queue.
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
    # Megatron's fused SwiGLU / bias-dropout-add are torch.compile'd on each rank's first step:
    # one compile worker per rank, not a pool of one per core on each of the node's 8 ranks.
    "TORCHINDUCTOR_COMPILE_THREADS": "1",
}
ENGINE_HOSTS_LINE = (
    'export ENGINE_NODES=$(scontrol show hostnames "$SLURM_JOB_NODELIST_HET_GROUP_1" '
    "| paste -sd, -)"
)
"""The engine group's hosts, for ``recipes.train`` (set before the tasks start)."""
REQUEUE_SIGNAL = "B:USR1@300"
"""Slurm sends USR1 to the batch script 5 minutes before the time limit, and the script
requeues the job: the run resumes from its latest checkpoint (a job that hits its limit is
otherwise ended, not requeued). The trap runs within a minute: tasks always run as a group, so
the script waits in the monitor loop's ``sleep 60``, never in a foreground srun."""


def time_limit_lines(job_dir: str) -> list[str]:
    """The trap, and the failure-retry budget kept whole: every requeue raises
    ``SLURM_RESTART_COUNT``, which NeMo-Run compares with ``TORCHX_MAX_RETRIES`` before
    requeueing a failed job, so time-limit requeues (counted in a file) are added to it."""
    counter = f"{job_dir}/.time_limit_requeues_$SLURM_JOB_ID"
    return [
        f'TIME_LIMIT_REQUEUES=$(cat "{counter}" 2>/dev/null | wc -l)',
        "export TORCHX_MAX_RETRIES=$((TORCHX_MAX_RETRIES + TIME_LIMIT_REQUEUES))",
        f'trap \'echo "time limit near: requeueing $SLURM_JOB_ID"; echo >> "{counter}"; '
        'scontrol requeue "$SLURM_JOB_ID"\' USR1',
    ]


def _env(options: SlurmOptions, base: dict[str, str]) -> dict[str, str]:
    return {**base, **dict(item.split("=", 1) for item in options.env)}


def _slurm_executor(
    recipe: Recipe, options: SlurmOptions, nodes: int, tasks_per_node: int, env: dict
) -> run.SlurmExecutor:
    packager = run.GitArchivePackager() if options.packager == "git" else run.Packager()
    executor = run.SlurmExecutor(
        account=options.account,
        partition=options.partition,
        nodes=nodes,
        ntasks_per_node=tasks_per_node,
        gpus_per_node=recipe.launch.gpus_per_node,
        exclusive=True,
        time=options.time or recipe.launch.time,
        container_image=options.container_image,
        container_mounts=list(options.mounts),
        env_vars=_env(options, env),
        heterogeneous=bool(recipe.launch.engines.nodes),
        tunnel=run.LocalTunnel(job_dir=options.job_dir),
        packager=packager,
    )
    executor.retries = options.retries
    executor.signal = REQUEUE_SIGNAL
    return executor


def slurm_executors(recipe: Recipe, options: SlurmOptions) -> list[run.SlurmExecutor]:
    """[trainer] or [trainer, engines]: one torchrun per trainer node (it starts a process per
    GPU), one Slurm task per engine on the engine nodes."""
    launch = recipe.launch
    trainer = _slurm_executor(recipe, options, launch.train_nodes, 1, TRAINER_ENV)
    setup = time_limit_lines(options.job_dir)  # the first executor's lines are the script's
    trainer.setup_lines = "\n".join(setup + ([ENGINE_HOSTS_LINE] if launch.engines.nodes else []))
    if not launch.engines.nodes:
        return [trainer]
    engines = _slurm_executor(recipe, options, launch.engines.nodes, launch.engines_per_node, {})
    return [trainer, engines]
