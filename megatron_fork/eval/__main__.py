"""``python -m megatron_fork.eval --model M --prompts F --out D [--engine torch|sglang]``

Scores a Hugging Face folder or a Megatron checkpoint on an AIME/MATH-style prompt file
(JSONL, JSON or parquet) with avg@k and pass@k. Defaults are the paper's validation protocol:
k=32, temperature 1.0, top_p 0.7, responses up to 20480 tokens, and the trainer's eval seed.
Writes D/samples.jsonl (one line per sample: prompt id, sample index, response, extracted
answer, correct), D/summary.json and D/run.json; run the same command again to resume an
interrupted evaluation (finished prompts are kept, not generated again).

  python -m megatron_fork.eval --model runs/demo/base_model --prompts aime24.parquet --out ev
  python -m megatron_fork.eval --model M --prompts F --out D --engine sglang \\
      --server-url http://10.0.0.5:30000 http://10.0.0.6:30000
"""

import argparse
import json
import sys
import warnings

warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine|full scope is deprecated).*")

from megatron_fork.eval.engines import ENGINES  # noqa: E402 (after the filter)
from megatron_fork.eval.settings import EvalSettings, EvalSetupError  # noqa: E402


def parse_settings(argv=None) -> EvalSettings:
    d = EvalSettings(model="", prompts="", out="")  # the defaults
    p = argparse.ArgumentParser(
        prog="python -m megatron_fork.eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="Hugging Face folder or Megatron checkpoint")
    p.add_argument("--prompts", required=True, help="AIME/MATH-style JSONL, JSON or parquet")
    p.add_argument("--out", required=True, help="results folder (resumed when it has results)")
    p.add_argument("--engine", choices=sorted(ENGINES), default=d.engine)
    p.add_argument("--server-url", nargs="+", default=[], help="servers of a server engine")
    p.add_argument("-k", "--k", type=int, default=d.k, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--seed", type=int, default=d.seed, help="the trainer's eval.seed")
    p.add_argument("--max-prompts", type=int, default=None, help="first N prompts only")
    p.add_argument("--prompts-per-batch", type=int, default=d.prompts_per_batch)
    p.add_argument("--engine-batch-size", type=int, default=d.engine_batch_size)
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s)
    p.add_argument("--reward-workers", type=int, default=d.reward_workers)
    p.add_argument("--reward-time-limit", type=float, default=d.reward_time_limit_s)
    p.add_argument("--restart", action="store_true", help="discard earlier results in --out")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return EvalSettings(
        model=a.model, prompts=a.prompts, out=a.out, engine=a.engine,
        server_urls=tuple(a.server_url), k=a.k, temperature=a.temperature, top_p=a.top_p,
        top_k=a.top_k, max_new_tokens=a.max_new_tokens, seed=a.seed, max_prompts=a.max_prompts,
        prompts_per_batch=a.prompts_per_batch, engine_batch_size=a.engine_batch_size,
        request_timeout_s=a.request_timeout, reward_workers=a.reward_workers,
        reward_time_limit_s=a.reward_time_limit, restart=a.restart, progress=not a.no_progress,
    )  # fmt: skip


def main(argv=None) -> int:
    try:
        settings = parse_settings(argv)
        from megatron_fork.eval.runner import evaluate

        summary = evaluate(settings)
    except EvalSetupError as error:
        print(f"megatron_fork.eval: {error}", file=sys.stderr)
        return 2
    k = summary["k"]
    print(
        f"avg@{k} {summary['avg_at_k']:.4f}  pass@{k} {summary['pass_at_k']:.4f}  "
        f"({summary['prompts']} prompts, {summary['samples']} samples, "
        f"{summary['resumed_prompts']} resumed, {summary['wall_seconds']:.1f} s) -> "
        f"{settings.out}/summary.json"
    )
    print(json.dumps({key: summary[key] for key in ("avg_at_k", "pass_at_k", "k", "prompts")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
