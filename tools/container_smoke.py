"""The container's smoke check (``docker run --rm --gpus all IMAGE``; on Slurm: ``srun -N1
--gpus-per-node=8 --container-image=IMAGE python /opt/megatron-fork/tools/container_smoke.py``):
the pinned versions are the ones installed, the trainer's stack imports, sglang imports in its
own environment, every recipe passes its checks, ``SGLANG_NCCL_LIBRARY`` is the NCCL the
trainer's torch loaded and the engines' torch reports that version, and, with two GPUs or more,
one NCCL broadcast from the trainer's torch (GPU 0) reaches the engines' torch (GPU 1) intact
through the weight-update group's code (tools/smoke_collective.py). Exit status 1 with the
problems otherwise."""

import importlib.metadata as metadata
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make ``tools`` importable
    sys.path.insert(0, str(ROOT))


def pinned(requirements: Path) -> dict[str, str]:
    pins = {}
    for line in requirements.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[name] = version
    return pins


def version_problems(pins: dict[str, str]) -> list[str]:
    problems = []
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            problems.append(f"{name}: pinned {version}, installed {installed}")
    return problems


def _in_sglang_env(code: str) -> str | None:
    """What ``code`` prints in the engines' interpreter, with the engines' environment."""
    from recipes.engine_task import engine_environment

    python = os.environ.get("SGLANG_PYTHON", sys.executable)
    env = engine_environment(os.environ)
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    return done.stdout.strip() if done.returncode == 0 else None


def sglang_problem(expected: str) -> str | None:
    found = _in_sglang_env("import importlib.metadata as m; print(m.version('sglang'))")
    return None if found == expected else f"sglang: pinned {expected}, found {found}"


def nccl_problem() -> str | None:
    """Both ends of the trainer -> engines NCCL group must run one NCCL version."""
    import torch

    code = "import torch; print(torch.cuda.nccl.version())"
    trainer, engines = str(torch.cuda.nccl.version()), _in_sglang_env(code)
    return None if trainer == engines else f"NCCL: trainer {trainer}, engines {engines}"


def nccl_library_problem(environ=os.environ) -> str | None:
    """The library the engines preload is the file the trainer's torch loaded."""
    from tools.nccl_library import trainer_nccl

    preloaded, loaded = environ.get("SGLANG_NCCL_LIBRARY"), trainer_nccl()
    if preloaded and loaded and os.path.realpath(preloaded) == os.path.realpath(loaded):
        return None
    return f"NCCL library: SGLANG_NCCL_LIBRARY={preloaded}, the trainer's torch loaded {loaded}"


def collective_check(gpus: int) -> str | None:
    """The NCCL broadcast between both torches, which needs a GPU per rank."""
    from tools.smoke_collective import collective_problem

    if gpus < 2:
        print(f"collective: skipped ({gpus} GPU(s): NCCL refuses two ranks on one device)")
        return None
    return collective_problem("nccl", os.environ.get("SGLANG_PYTHON", sys.executable))


def main() -> None:
    from megatron_fork.rollout.sglang_protocol import SGLANG_VERSION
    from recipes.checks import check_recipe
    from recipes.registry import RECIPES, build_recipe

    problems = version_problems(pinned(ROOT / "requirements" / "container.txt"))
    problems += [sglang_problem(SGLANG_VERSION), nccl_problem(), nccl_library_problem()]
    for name in RECIPES:
        check_recipe(build_recipe(name))
    import torch
    import transformer_engine

    problems.append(collective_check(torch.cuda.device_count()))

    print(
        f"torch {torch.__version__} (CUDA {torch.version.cuda}, GPUs: {torch.cuda.device_count()})"
    )
    print(f"transformer_engine {transformer_engine.__version__}; recipes: {', '.join(RECIPES)}")
    problems = [p for p in problems if p]
    for problem in problems:
        print(f"smoke: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
