"""Command line of an RL run, for one process or torchrun/Slurm (one process per GPU):

    python -m megatron_fork.rl.rl_main --config run_config.json [--set loss.rho=0.5 ...]
    torchrun --nproc-per-node 2 -m megatron_fork.rl.rl_main --config ... \\
        --set parallel.tensor_parallel=2

``--config`` is an ``RLConfig`` as JSON (a recipe's output, or a run's own
``run_config.json``); ``--set`` overrides its fields.
"""

import argparse
import json
import warnings
from pathlib import Path


def load_config(path: str | Path, overrides: list[str]):
    """The ``RLConfig`` of a JSON file, with overrides."""
    from megatron_fork.rl.overrides import apply_overrides, config_from_dict
    from megatron_fork.rl.rl_config import RLConfig

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"cannot read the run config {path}: {error}") from error
    return apply_overrides(config_from_dict(RLConfig, data), overrides)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="forking-token RL run (Megatron-Core)")
    parser.add_argument("--config", required=True, help="RLConfig as JSON")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    # Megatron-Core announces its Apex/TE fallbacks on import: expected on CPU, silenced first.
    warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")
    from megatron_fork.rl.rl_loop import run_rl

    run_rl(load_config(args.config, args.set))


if __name__ == "__main__":
    main()
