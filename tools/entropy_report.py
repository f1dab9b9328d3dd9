"""Token-entropy report for a model: generate responses for held-out prompts, record every
token's entropy through the trainer's op, and write a report folder (stats.json, report.md,
entropy.png) beside the token table.

Usage:  .venv/bin/python tools/entropy_report.py --model runs/demo/base_model
        --out runs/entropy_report/base [--prompts 64] [--max-new-tokens 64] [--temperature 1.0]
(--model: a Hugging Face folder or a Megatron checkpoint, e.g. runs/demo/run/checkpoints/step_N).
The prompts are the synthetic task's held-out set (the demo's data).
"""

import argparse
from pathlib import Path

from megatron_fork.analysis.collect import CollectConfig, collect
from megatron_fork.analysis.entropy_report import write_entropy_report
from megatron_fork.data.prompt_sets import DataConfig, load_prompt_sets
from megatron_fork.trainer.actor import init_parallel, shutdown_parallel
from megatron_fork.trainer.rl_config import ParallelConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = [e.prompt for e in load_prompt_sets(DataConfig()).eval[: args.prompts]]
    config = CollectConfig(
        args.model, str(out / "tokens.parquet"), temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, seed=args.seed, prompt_set="synthetic held-out",
    )  # fmt: skip
    init_parallel(ParallelConfig(), args.seed)
    try:
        table = collect(config, prompts)
    finally:
        shutdown_parallel()
    print(f"wrote {write_entropy_report(table, out)}")


if __name__ == "__main__":
    main()
