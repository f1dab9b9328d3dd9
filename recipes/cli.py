"""``python -m recipes``: check a recipe, plan its memory, and launch it with NeMo-Run.

    python -m recipes list
    python -m recipes tiny_cpu [--nproc 2] [section.field=value ...]
    python -m recipes qwen3_32b --executor slurm --account A --container-image /abs/img.sqsh \\
        --mount /lustre:/lustre base_model=/lustre/... output_dir=/lustre/... data.train=...
        data.eval=... [--dryrun] [section.field=value | launch.x=v ...]
        [--qos Q --reservation R --constraint C --mem 0 --gres gpu:8 --job-name N ...]

Every check (override keys and types, TP/PP/CP against the model and the sequence, the memory
plan) runs before NeMo-Run is asked for anything; a failed check exits with status 2 and one
message. ``--dryrun`` prints the sbatch script instead of submitting it.
"""

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from recipes.checks import check_paths_mounted, check_recipe
from recipes.launch.container_image import check_image_file_exists
from recipes.launch.git_checkout import check_git_checkout
from recipes.launch.job_environment import network_env
from recipes.launch.slurm_options import SlurmOptions, check_gpu_request
from recipes.recipe import Recipe
from recipes.registry import RECIPE_ERRORS, RECIPES, build_recipe, error_message


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recipes", description=__doc__.split("\n")[0])
    parser.add_argument("name", help=f"'list' or one of {sorted(RECIPES)}")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--dryrun", action="store_true", help="print the sbatch script only")
    parser.add_argument("--nproc", type=int, default=1, help="local: torchrun processes")
    _slurm_arguments(parser.add_argument_group("slurm"))
    return parser


def _slurm_arguments(slurm) -> None:
    """Every option is a ``SlurmOptions`` field (its docstring says more)."""
    slurm.add_argument("--account")
    slurm.add_argument("--partition")
    slurm.add_argument("--qos")
    slurm.add_argument("--reservation")
    slurm.add_argument("--constraint", help="node features, e.g. h100")
    slurm.add_argument("--mem", default=SlurmOptions.mem, help="per node; 0 = all of it")
    slurm.add_argument("--gres", help="gpu:N or gpu:TYPE:N instead of --gpus-per-node")
    slurm.add_argument("--job-name")
    slurm.add_argument("--container-image", default="", help="absolute .sqsh path or pinned ref")
    slurm.add_argument("--mount", action="append", default=[], metavar="HOST:CONTAINER")
    slurm.add_argument("--job-dir", default=SlurmOptions.job_dir)
    slurm.add_argument("--time")
    slurm.add_argument("--retries", type=int, default=SlurmOptions.retries)
    slurm.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    slurm.add_argument("--api-key-file", help="file with the engines' key (default: one per job)")
    slurm.add_argument("--cache-dir", help="JIT caches (default: /tmp/rlvr-$SLURM_JOB_ID)")
    slurm.add_argument(
        "--rendezvous-timeout",
        type=int,
        default=SlurmOptions.rendezvous_timeout_s,
        metavar="SECONDS",
        help="how long torchrun waits for every trainer node",
    )
    slurm.add_argument("--packager", choices=("none", "git"), default=SlurmOptions.packager)


def _slurm_options(args) -> SlurmOptions:
    return SlurmOptions(
        account=args.account or "",
        container_image=args.container_image,
        partition=args.partition,
        mounts=tuple(args.mount),
        job_dir=str(Path(args.job_dir).absolute()),
        time=args.time,
        retries=args.retries,
        env=tuple(args.env),
        network_env=network_env(os.environ),
        packager=args.packager,
        qos=args.qos,
        reservation=args.reservation,
        constraint=args.constraint,
        mem=args.mem,
        gres=args.gres,
        job_name=args.job_name,
        api_key_file=args.api_key_file,
        cache_dir=args.cache_dir,
        rendezvous_timeout_s=args.rendezvous_timeout,
    )


def _check_slurm_side(recipe: Recipe, options: SlurmOptions, submitting: bool) -> None:
    """What depends on the recipe or this host: mounts, the GPU request, the image file (only
    when submitting: a dry run may be made anywhere), the git checkout; and what is taken from
    this shell."""
    check_paths_mounted(recipe, options.mounts)
    check_gpu_request(options, recipe.launch.gpus_per_node)
    if submitting:
        check_image_file_exists(options.container_image)
    if options.packager == "git":
        print(check_git_checkout(Path.cwd()), file=sys.stderr)
    if options.network_env:
        settings = ", ".join(options.network_env)
        print(f"recipes: every task gets {settings} from this shell", file=sys.stderr)


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
        _check_slurm_side(recipe, options, submitting=not args.dryrun)
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
