"""``make demo``: the project's main job on one CPU machine.

A tiny Qwen3 is warm-started on the synthetic fold task (saved as a Hugging Face directory, the
"base model", reused by later runs), then trained with RL where the policy gradient flows only
through the top 20% highest-entropy tokens. Ends with a table and a report folder
(``summary.json``, ``curves.png``; default ``runs/demo/``).

    python tools/demo.py [--output runs/demo] [--seed 0] [--set loss.rho=0.5 ...] [--resume]
"""

import argparse
import shutil
import time
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table

# Megatron-Core announces its Apex/Transformer Engine fallbacks on import; on CPU they are
# expected, so they are silenced before the imports below (in main).
warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine|full scope is deprecated).*")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="runs/demo", help="report folder (default runs/demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="RL config overrides"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the RL run in --output",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args()


def print_table(summary: dict) -> None:
    table = Table(title="forking-token RL on the tiny Qwen3 (held-out split)")
    table.add_column("")
    table.add_column("before RL", justify="right")
    table.add_column("after RL", justify="right")
    table.add_row(
        "held-out accuracy (avg@k)",
        f"{summary['base_accuracy']:.3f}",
        f"{summary['final_accuracy']:.3f}",
    )
    table.add_row(
        "rollout accuracy",
        f"{summary['rollout_accuracy_first_steps']:.3f}",
        f"{summary['rollout_accuracy_last_steps']:.3f}",
    )
    table.add_row(
        "mean token entropy (nats)",
        f"{summary['entropy_mean_first_steps']:.3f}",
        f"{summary['entropy_mean_last_steps']:.3f}",
    )
    table.add_row("fraction of tokens selected", "", f"{summary['selected_fraction_mean']:.3f}")
    console = Console()
    console.print(table)
    console.print(
        f"RL steps {summary['rl_steps']}, wall {summary['wall_seconds']:.0f} s "
        f"(warm start {summary['warm_start_seconds']:.0f} s)"
    )


def main() -> None:
    from megatron_fork.reporting.run_report import write_run_report
    from megatron_fork.rl.overrides import apply_overrides
    from megatron_fork.rl.rl_loop import run_rl
    from recipes import tiny_qwen3_cpu

    args = parse_args()
    start = time.perf_counter()
    output = Path(args.output)
    base, warm_seconds = tiny_qwen3_cpu.ensure_base_model(output, args.seed)
    run_dir = output / "run"
    if not args.resume:
        shutil.rmtree(run_dir, ignore_errors=True)
    config = apply_overrides(tiny_qwen3_cpu.rl(base, run_dir, args.seed), args.set)
    if args.no_progress:
        config = apply_overrides(config, ["progress=False"])
    run_rl(config)
    summary = write_run_report(
        run_dir,
        output,
        {
            "wall_seconds": time.perf_counter() - start,
            "warm_start_seconds": warm_seconds,
            "strategy": config.loss.strategy,
            "rho": config.loss.rho,
            "seed": args.seed,
            "eval_samples_per_prompt": config.eval.samples_per_prompt,
            "title": f"{config.loss.strategy} rho={config.loss.rho} seed={args.seed}",
        },
    )
    print_table(summary)
    print(f"report: {output / 'summary.json'}, {output / 'curves.png'}")


if __name__ == "__main__":
    main()
