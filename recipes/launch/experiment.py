"""A recipe as a NeMo-Run experiment: submitted, run locally, or (dry run) the sbatch script
it would submit."""

import contextlib
import sys
from pathlib import Path

import nemo_run as run

from recipes.launch.executors import slurm_executors
from recipes.launch.slurm_options import SlurmOptions
from recipes.launch.tasks import local_trainer_task, slurm_engine_task, slurm_trainer_task
from recipes.recipe import Recipe


def _add_slurm_job(experiment, recipe: Recipe, name: str, overrides: list[str], options) -> None:
    """Always a task group (one task without engines): NeMo-Run then runs the sruns in the
    background under its monitor loop, where the time-limit trap can run."""
    executors = slurm_executors(recipe, options)
    tasks = [slurm_trainer_task(recipe, name, overrides, options.rendezvous_timeout_s)]
    if len(executors) == 2:
        tasks.append(slurm_engine_task(name, overrides))
    experiment.add(tasks, executor=executors, name=name)


def slurm_sbatch_script(recipe: Recipe, name: str, overrides: list[str], options) -> str:
    """The sbatch script NeMo-Run would submit for the recipe (nothing is submitted). NeMo-Run's
    own messages go to stderr, so ``--dryrun > job.sbatch`` is the script alone."""
    with (
        contextlib.redirect_stdout(sys.stderr),
        run.Experiment(f"{name}-dryrun", log_level="WARN", base_dir=options.job_dir) as experiment,
    ):
        _add_slurm_job(experiment, recipe, name, overrides, options)
        experiment.dryrun(log=False)
        job = experiment.jobs[0]
        infos = getattr(job, "_dryrun_infos", None) or [job._dryrun_info]
        return infos[0].request.materialize()


def submit_to_slurm(recipe: Recipe, name: str, overrides: list[str], options: SlurmOptions):
    """Submits; the experiment's folder (logs, rank logs) is private to the user: sglang logs
    its arguments, the engines' API key among them, into the engine log."""
    private_folder(Path(options.job_dir) / "experiments" / name)
    with run.Experiment(name, log_level="INFO", base_dir=options.job_dir) as experiment:
        _add_slurm_job(experiment, recipe, name, overrides, options)
        experiment.run(detach=True)


def private_folder(path: Path) -> None:
    """``path`` (made if missing) readable by its owner only: what is below it cannot be reached
    by others, whatever the modes Slurm or NeMo-Run give the files."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def run_locally(name: str, overrides: list[str], nproc: int) -> None:
    """Runs to completion here (torchrun for nproc > 1); raises if the run fails."""
    with run.Experiment(name, log_level="WARN") as experiment:
        task = local_trainer_task(name, overrides, nproc)
        experiment.add(task, executor=run.LocalExecutor(), name=name)
        experiment.run(sequential=True, tail_logs=True)
    status = str(experiment.jobs[0].state)  # the experiment waited for its job on leaving
    if status != "SUCCEEDED":
        raise RuntimeError(f"local run of {name}: {status} (its log is printed above)")
