"""NeMo-Run's Slurm executors for a recipe: a trainer node group, plus an engine node group in
the same heterogeneous job when the recipe has engines. (Locally a plain ``LocalExecutor``
runs ``tasks.local_trainer_task``, which brings its own torchrun.)"""

import nemo_run as run

from recipes.colocation import TRAINER_HOSTS_LINE, TRAINER_NODES, is_colocated
from recipes.launch.job_environment import (
    API_KEY,
    TRAINER_ENV,
    VLLM_API_KEY,
    api_key_lines,
    container_env,
    task_env,
    unset_host_python_line,
)
from recipes.launch.slurm_options import SlurmOptions
from recipes.recipe import Recipe

ENGINE_NODES = "ENGINE_NODES"
ENGINE_HOSTS_LINE = (
    f'export {ENGINE_NODES}=$(scontrol show hostnames "$SLURM_JOB_NODELIST_HET_GROUP_1" '
    "| paste -sd, -)"
)
"""The engine group's hosts, for ``recipes.train`` (set before the tasks start)."""
REQUEUE_SIGNAL = "B:USR1@300"
"""Slurm sends USR1 to the batch script 5 minutes before the time limit, and the script
requeues the job: the run resumes from its latest checkpoint (a job that hits its limit is
otherwise ended, not requeued). The trap runs within a minute: tasks always run as a group, so
the script waits in the monitor loop's ``sleep 60``, never in a foreground srun."""
SRUN_ARGS = [
    "--label",  # each output line starts with its task number
    "--cpu-bind=none",  # a site's default binding would pin a task (8 ranks, workers) to a core
    "--container-writable",  # enroot's default root is read-only (ENROOT_ROOTFS_WRITABLE no)
    "--no-container-mount-home",  # no ~/.local on sys.path; caches go to the job's folder
]


def experiments_dir(options: SlurmOptions) -> str:
    """Where NeMo-Run writes each experiment (script, code, logs), under ``--job-dir``. The
    experiment (``base_dir``) and the tunnel must name the same folder: NeMo-Run writes the
    script under the experiment's folder and hands ``sbatch`` the tunnel's path to it (0.11.1
    ``Experiment.__init__`` ``base_dir/experiments/<title>/<id>``, ``LocalTunnel._set_job_dir``
    ``job_dir/<title>/<id>``, ``SlurmTunnelScheduler.schedule`` ``dst_path``)."""
    return f"{options.job_dir}/experiments"


def time_limit_lines(job_dir: str) -> list[str]:
    """The trap, and the failure-retry budget kept whole: every requeue raises
    ``SLURM_RESTART_COUNT``, which NeMo-Run compares with ``TORCHX_MAX_RETRIES`` before
    requeueing a failed job, so time-limit requeues (counted in a file) are added to it.
    (``job_dir`` is a plain path: ``SlurmOptions`` refuses quotes, spaces and ``$`` in it.)"""
    counter = f"{job_dir}/.time_limit_requeues_$SLURM_JOB_ID"
    return [
        f'TIME_LIMIT_REQUEUES=$(cat "{counter}" 2>/dev/null | wc -l)',
        "export TORCHX_MAX_RETRIES=$((TORCHX_MAX_RETRIES + TIME_LIMIT_REQUEUES))",
        f'trap \'echo "time limit near: requeueing $SLURM_JOB_ID"; echo >> "{counter}"; '
        'scontrol requeue "$SLURM_JOB_ID"\' USR1',
    ]


def setup_lines(recipe: Recipe, options: SlurmOptions) -> list[str]:
    """The script's own lines, after NeMo-Run's exports and before the sruns."""
    lines = [unset_host_python_line(options), *time_limit_lines(options.job_dir)]
    if recipe.launch.engines.nodes:
        lines.append(ENGINE_HOSTS_LINE)
    if is_colocated(recipe):  # engines on the training nodes, started by the trainer
        lines.append(TRAINER_HOSTS_LINE)
    if recipe.launch.engines.nodes or is_colocated(recipe) or options.api_key_file is not None:
        lines += api_key_lines(options)
    return lines


def _slurm_executor(
    recipe: Recipe, options: SlurmOptions, nodes: int, tasks_per_node: int, env: dict
) -> run.SlurmExecutor:
    packager = (
        run.GitArchivePackager(check_uncommitted_changes=True)
        if options.packager == "git"
        else run.Packager()
    )
    executor = run.SlurmExecutor(
        account=options.account,
        partition=options.partition,
        qos=options.qos,
        constraint=options.constraint,
        additional_parameters={"reservation": options.reservation} if options.reservation else None,
        nodes=nodes,
        ntasks_per_node=tasks_per_node,
        gpus_per_node=None if options.gres else recipe.launch.gpus_per_node,
        gres=options.gres,
        exclusive=True,
        mem=options.mem,
        time=options.time or recipe.launch.time,
        container_image=options.container_image,
        container_mounts=list(options.mounts),
        env_vars=env,
        container_env=container_env(env, ENGINE_NODES, TRAINER_NODES, API_KEY, VLLM_API_KEY),
        srun_args=list(SRUN_ARGS),
        heterogeneous=bool(recipe.launch.engines.nodes),
        tunnel=run.LocalTunnel(job_dir=experiments_dir(options)),
        packager=packager,
    )
    executor.retries = options.retries
    executor.signal = REQUEUE_SIGNAL
    return executor


def slurm_executors(recipe: Recipe, options: SlurmOptions) -> list[run.SlurmExecutor]:
    """[trainer] or [trainer, engines]: one torchrun per trainer node (it starts a process per
    GPU), one Slurm task per engine on the engine nodes."""
    launch = recipe.launch
    trainer_env = task_env(options, TRAINER_ENV)
    trainer = _slurm_executor(recipe, options, launch.train_nodes, 1, trainer_env)
    name = options.job_name or recipe.name
    trainer.job_details.job_name = name  # the job's name; the trainer's log-<name>_<job>_<n>
    trainer.setup_lines = "\n".join(setup_lines(recipe, options))  # the first executor's count
    if not launch.engines.nodes:
        return [trainer]
    engines_env = task_env(options, {})
    engines = _slurm_executor(
        recipe, options, launch.engines.nodes, launch.engines_per_node, engines_env
    )
    engines.job_details.job_name = f"{name}-engines"
    return [trainer, engines]
