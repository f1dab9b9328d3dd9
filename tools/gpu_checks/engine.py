"""One sglang engine beside the kit's trainer, started the way the Slurm recipe starts its
engines: ``recipes.engine_task.engine_config`` (the recipe's engine settings, dummy weights,
deterministic inference, ``SGLANG_PYTHON``), ``rollout.sglang_launch.sglang_server_command``
and ``engine_task.engine_environment`` (the trainer's NCCL preloaded). Only the place differs:
loopback, a free port, and the GPUs after the training ranks' (``--base-gpu-id``).

The engine runs in a session of its own so that ``stop`` reaches every process sglang starts
(scheduler, TP workers, detokenizer); the check stops it in a ``finally``."""

import dataclasses
import os
import signal
import socket
import subprocess
from pathlib import Path

from tools.gpu_checks.kit_layout import KitLayout

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def engine_launch(
    recipe_name: str, layout: KitLayout, model_dir: Path, port: int, scratch: Path
) -> tuple[list[str], dict]:
    """The command line and environment of the kit's engine for ``recipe_name``."""
    from megatron_fork.rollout.sglang_launch import sglang_server_command
    from recipes.engine_task import engine_config, engine_environment
    from recipes.registry import build_recipe

    recipe = build_recipe(
        recipe_name,
        [
            f"base_model={model_dir}",
            f"launch.engines.tensor_parallel={layout.engine_tensor_parallel}",
        ],
    )
    config = engine_config(recipe, 0, LOOPBACK, scratch)
    config = dataclasses.replace(config, port=port, base_gpu_id=layout.train_gpus)
    return sglang_server_command(config), engine_environment(os.environ)


def start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        out.write(" ".join(command) + "\n")
        out.flush()
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen | None, grace_s: float = 30.0) -> None:
    """SIGTERM to the engine's session, SIGKILL to what is left after ``grace_s``."""
    if process is None:
        return
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
    process.wait()
