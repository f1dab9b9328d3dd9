"""The templated task's base model and its entropy regime, beside the paper's figures.

Usage:
  .venv/bin/python tools/templated_task.py --output runs/templated [--prompts 64] [--sweep-k 4]
                                           [--model 0.8M|3.0M]

Warm-starts ``output/base_model`` on the templated task (``recipes.tiny_qwen3_cpu.
ensure_templated_base_model``; reused when there), writes its held-out prompts as an AIME-style
file (``output/heldout.jsonl``), runs the entropy report (``tools/entropy_report.py``: the
base's own responses at temperature 1, statistics, forking pieces, avg@k at T = 1) into
``output/entropy_report``, then splits the base's tokens into decision points (comparisons and
step results, ``templated_task.decision_mask``) and template-determined text, and prints the
share below 0.01 nats, the 80th percentile and where the top-20% tokens sit, beside the
paper's 50.6% and 0.672 (``output/regime.json``).
"""

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine|full scope is deprecated).*")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_heldout(path: Path, data) -> Path:
    """The task's held-out split as JSONL rows {id, prompt, answer} (the AIME layout)."""
    from megatron_fork.data.prompt_sets import load_prompt_sets

    rows = [
        {"id": e.id, "prompt": e.prompt, "answer": e.answer} for e in load_prompt_sets(data).eval
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_report(base: Path, prompts: Path, out: Path, args) -> None:
    from recipes.tiny_qwen3_cpu import TEMPLATED_MAX_NEW_TOKENS

    command = [
        sys.executable, str(Path(__file__).with_name("entropy_report.py")), "--base", str(base),
        "--out", str(out), "--prompt-file", str(prompts), "--prompts", str(args.prompts),
        "--max-new-tokens", str(TEMPLATED_MAX_NEW_TOKENS), "--t-high", "1.0", "--t-low", "1.0",
        "--sweep-k", str(args.sweep_k), "--sweep-prompts", str(args.prompts),
    ]  # fmt: skip
    subprocess.run(command, check=True)


def regime(table: Path, rho: float) -> dict:
    """Entropy of decision vs determined tokens of the base's own responses (token table)."""
    import pyarrow.parquet as pq
    import torch

    from megatron_fork.analysis.entropy_statistics import summarize_entropy
    from megatron_fork.analysis.overlap import top_positions
    from megatron_fork.data.templated_task import decision_mask

    frame = pq.read_table(table, columns=["sample", "position", "text", "entropy"]).to_pylist()
    mask, entropy = [], []
    for sample in dict.fromkeys(r["sample"] for r in frame):
        rows = sorted((r for r in frame if r["sample"] == sample), key=lambda r: r["position"])
        mask += decision_mask([r["text"] for r in rows])
        entropy += [r["entropy"] for r in rows]
    values = torch.tensor(entropy, dtype=torch.float64)  # [N]
    decided = torch.tensor(mask)  # [N] bool
    top = top_positions(values, rho)  # [N] bool
    summary = summarize_entropy(values, rho)
    return {
        "tokens": summary.tokens,
        "share_below_001": summary.share_below_001,
        "p80": summary.percentiles["p80"],
        "mean": summary.mean,
        "decision_tokens": int(decided.sum()),
        "decision_mean_entropy": float(values[decided].mean()),
        "determined_mean_entropy": float(values[~decided].mean()),
        "determined_share_below_001": float((values[~decided] < 0.01).double().mean()),
        "decisions_in_top": float((top & decided).sum() / decided.sum()),
        "top_that_are_decisions": float((top & decided).sum() / top.sum()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="runs/templated")
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts sampled and scored")
    p.add_argument("--sweep-k", type=int, default=4, help="samples per prompt of avg@k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="0.8M", help="a size of tiny_qwen3_cpu.TEMPLATED_MODELS")
    args = p.parse_args()
    from megatron_fork.analysis.entropy_statistics import PAPER_BELOW_001, PAPER_P80
    from recipes.tiny_qwen3_cpu import ensure_templated_base_model, templated_data

    output = Path(args.output)
    base, seconds = ensure_templated_base_model(output, args.seed, args.model)
    print(f"base model {base} (warm start {seconds:.0f} s)")
    prompts = write_heldout(output / "heldout.jsonl", templated_data())
    report = output / "entropy_report"
    run_report(base, prompts, report, args)
    numbers = regime(report / "base" / "tokens.parquet", rho=0.2)
    sweep = json.loads((report / "sweep.json").read_text())
    numbers["sweep"] = sweep
    (output / "regime.json").write_text(json.dumps(numbers, indent=2) + "\n")
    print(f"{'figure':<44}{'base':>10}{'paper':>10}")
    print(f"{'share of tokens below 0.01 nats':<44}{numbers['share_below_001']:>10.1%}"
          f"{PAPER_BELOW_001:>10.1%}")  # fmt: skip
    print(f"{'80th percentile of entropy (nats)':<44}{numbers['p80']:>10.3f}{PAPER_P80:>10.3f}")
    for key in (
        "tokens", "mean", "decision_tokens", "decision_mean_entropy", "determined_mean_entropy",
        "determined_share_below_001", "decisions_in_top", "top_that_are_decisions",
    ):  # fmt: skip
        print(f"{key:<44}{numbers[key]:>10.3f}")
    print(f"avg@k at T = 1 (sweep.json): {json.dumps(sweep)[:300]}")


if __name__ == "__main__":
    main()
