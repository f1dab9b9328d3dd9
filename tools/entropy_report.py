"""Entropy-pattern report: the paper's analysis of where the high-entropy "forking" tokens are
and how RL moves them, for your models, in one folder.

Usage:
  .venv/bin/python tools/entropy_report.py --base runs/demo/base_model \\
      --rl runs/demo/run/checkpoints/step_00000060 --out runs/entropy_report \\
      [--checkpoints D1 D2 ...] [--prompts 64] [--prompt-file F.jsonl] [--max-new-tokens 48]
      [--rho 0.2] [--t-high 0.6 1.0 1.4] [--t-low 0.6 1.0 1.4] [--threshold X] [--sweep-k 4]
      [--sweep-prompts 64] [--sweep-on base|rl] [--no-sweep] [--tp 1]

Models are Hugging Face folders or Megatron checkpoints. Writes per-model statistics and plots,
responses rendered by entropy (HTML + PNG), the evolution under RL on the base's responses
(overlap, scatter, change per bucket, overlap vs step), the two-temperature sweep and
``report.md`` (see megatron_fork/analysis/analysis_report.py). Without --rl: the base alone.
Prompts: the synthetic task's held-out set, or --prompt-file (JSONL/JSON/parquet rows with a
"prompt" field; gold answers, for the sweep, as in AIME-style files). With --tp N, launch under
``torchrun --nproc-per-node N``: the models are sharded over TP, rank 0 writes. --rho is the
trainer's loss.rho: the share of tokens that are forking tokens (0.2 = the top 20%, exactly
ceil(0.2 * N) of N tokens), for the statistics, overlaps and the sweep's threshold. Bad settings
(a model that does not open, another vocabulary, no prompt, a sweep without gold answers or with
a threshold from entropies at T != 1) are refused before any model loads.
"""

import argparse
import time
import warnings

warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine|full scope is deprecated).*")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", "--model", dest="base", required=True, help="the base model")
    p.add_argument("--rl", help="the model after RL")
    p.add_argument("--checkpoints", nargs="*", default=[], help="checkpoints for overlap vs step")
    p.add_argument("--out", required=True, help="the report folder")
    p.add_argument("--prompts", type=int, default=64, help="prompts collected per model")
    p.add_argument("--prompt-file", default="synthetic", help='a prompt file, or "synthetic"')
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--rho", type=float, default=0.2, help="forking tokens = the top rho by entropy (<= 0.5)"
    )
    p.add_argument("--t-high", type=float, nargs="+", default=[0.6, 1.0, 1.4])
    p.add_argument("--t-low", type=float, nargs="+", default=[0.6, 1.0, 1.4])
    p.add_argument("--threshold", type=float, help="fixed entropy threshold of the sweep")
    p.add_argument("--sweep-k", type=int, default=4, help="k of avg@k in the sweep")
    p.add_argument("--sweep-prompts", type=int, default=64)
    p.add_argument("--sweep-on", choices=("base", "rl"), default="base")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size (torchrun)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def build_config(args):
    """The analysis settings of the command line (ValueError for a bad one)."""
    from megatron_fork.analysis.analysis_report import AnalysisConfig
    from megatron_fork.analysis.temperature_sweep import SweepConfig
    from megatron_fork.trainer.trainer_config import ParallelConfig

    sweep = SweepConfig(
        high_temperatures=tuple(args.t_high), low_temperatures=tuple(args.t_low),
        threshold=args.threshold, rho=args.rho, samples_per_prompt=args.sweep_k,
        max_prompts=args.sweep_prompts, max_new_tokens=args.max_new_tokens,
    )  # fmt: skip
    return AnalysisConfig(
        base=args.base, out=args.out, rl=args.rl, checkpoints=tuple(args.checkpoints),
        prompt_set=args.prompt_file, prompts=args.prompts, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, rho=args.rho, seed=args.seed,
        sweep=None if args.no_sweep else sweep, sweep_model=args.sweep_on,
        parallel=ParallelConfig(tensor_parallel=args.tp),
    )  # fmt: skip


def main() -> None:
    from megatron_fork.analysis.analysis_report import write_analysis
    from megatron_fork.parallel.rank0 import is_rank0
    from megatron_fork.trainer.actor import init_parallel, shutdown_parallel

    args = parse_args()
    start = time.perf_counter()
    try:
        config = build_config(args)
    except ValueError as error:  # one line, before anything starts
        raise SystemExit(f"entropy_report: {error}") from None
    init_parallel(config.parallel, args.seed)
    try:
        out = write_analysis(config)
        rank0 = is_rank0()
    finally:
        shutdown_parallel()
    if rank0:
        print(f"wrote {out}/report.md in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
