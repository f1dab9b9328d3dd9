"""``python -m recipes``: check a recipe, plan its memory, and launch it with NeMo-Run.

    python -m recipes list
    python -m recipes tiny_cpu [--nproc 2] [section.field=value ...]
    python -m recipes qwen3_32b --executor slurm --account A --container-image IMG \\
        --mount /lustre:/lustre base_model=/lustre/... output_dir=/lustre/... data.train=...
        data.eval=... [--dryrun] [section.field=value | launch.x=v ...]

Every check (override keys and types, TP/PP/CP against the model and the sequence, the memory
plan) runs before NeMo-Run is asked for anything; a failed check exits with status 2 and one
message. ``--dryrun`` prints the sbatch script instead of submitting it.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from recipes.checks import check_paths_mounted, check_recipe
from recipes.launch.slurm_options import SlurmOptions
from recipes.recipe import Recipe
from recipes.registry import RECIPE_ERRORS, RECIPES, build_recipe, error_message


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recipes", description=__doc__.split("\n")[0])
    parser.add_argument("name", help=f"'list' or one of {sorted(RECIPES)}")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--dryrun", action="store_true", help="print the sbatch script only")
    parser.add_argument("--nproc", type=int, default=1, help="local: torchrun processes")
    slurm = parser.add_argument_group("slurm")
    slurm.add_argument("--account")
    slurm.add_argument("--partition")
    slurm.add_argument("--container-image", default=SlurmOptions.container_image)
    slurm.add_argument("--mount", action="append", default=[], metavar="HOST:CONTAINER")
    slurm.add_argument("--job-dir", default=SlurmOptions.job_dir)
    slurm.add_argument("--time")
    slurm.add_argument("--retries", type=int, default=SlurmOptions.retries)
    slurm.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    slurm.add_argument("--packager", choices=("none", "git"), default=SlurmOptions.packager)
    return parser


def _slurm_options(args) -> SlurmOptions:
    return SlurmOptions(
        account=args.account or "",
        partition=args.partition,
        container_image=args.container_image,
        mounts=tuple(args.mount),
        job_dir=str(Path(args.job_dir).absolute()),
        time=args.time,
        retries=args.retries,
        env=tuple(args.env),
        packager=args.packager,
    )


def _checked(args) -> tuple[Recipe, SlurmOptions | None]:
    recipe = build_recipe(args.name, args.overrides)
    options = _slurm_options(args) if args.executor == "slurm" else None
    if args.executor == "local":
        if recipe.launch.engines.nodes:
            raise ValueError(
                f"{recipe.name} runs its engines on their own nodes: use --executor slurm"
            )
        # This machine is the one node; --nproc processes on it.
        launch = dataclasses.replace(recipe.launch, train_nodes=1, gpus_per_node=args.nproc)
        recipe = dataclasses.replace(recipe, launch=launch)
    plan = check_recipe(recipe)
    if options is not None:
        check_paths_mounted(recipe, options.mounts)
    if plan is not None:
        print(plan.table(), file=sys.stderr)
    return recipe, options


def _local_overrides(recipe: Recipe, overrides: list[str]) -> list[str]:
    """Paths made absolute here: NeMo-Run starts local jobs in its own directory."""
    paths = [f"base_model={Path(recipe.config.base_model).absolute()}"]
    paths.append(f"output_dir={Path(recipe.config.output_dir).absolute()}")
    return [*overrides, *paths]


def _launch(args, recipe: Recipe, options: SlurmOptions | None) -> None:
    from recipes.launch import experiment  # NeMo-Run is imported only to launch

    if options is None:
        if recipe.prepare is not None:
            recipe.prepare(recipe.config)
        try:
            experiment.run_locally(args.name, _local_overrides(recipe, args.overrides), args.nproc)
        except RuntimeError as error:
            print(f"recipes: error: {error}", file=sys.stderr)
            raise SystemExit(1) from None
    elif args.dryrun:
        print(experiment.slurm_sbatch_script(recipe, args.name, args.overrides, options))
    else:
        experiment.submit_to_slurm(recipe, args.name, args.overrides, options)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_intermixed_args(argv)
    if args.name == "list":
        for name, make in RECIPES.items():
            print(f"{name:12s} {make().summary}")
        return
    try:
        recipe, options = _checked(args)
    except RECIPE_ERRORS as error:
        print(f"recipes: error: {error_message(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    _launch(args, recipe, options)
