"""The container's smoke check (``docker run --rm IMAGE``; on Slurm: ``srun --container-image
IMAGE python /opt/megatron-fork/tools/container_smoke.py``): the pinned versions are the ones
installed, the trainer's stack imports, sglang imports in its own environment, and every recipe
passes its checks, and the engines' torch loads the trainer's NCCL version. Exit status 1 with
the mismatches otherwise."""

import importlib.metadata as metadata
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def main() -> None:
    from megatron_fork.rollout.sglang_protocol import SGLANG_VERSION
    from recipes.checks import check_recipe
    from recipes.registry import RECIPES, build_recipe

    problems = version_problems(pinned(ROOT / "requirements" / "container.txt"))
    problems += [sglang_problem(SGLANG_VERSION), nccl_problem()]
    for name in RECIPES:
        check_recipe(build_recipe(name))
    import torch
    import transformer_engine

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
