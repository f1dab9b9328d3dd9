"""A token table -> a report folder: ``stats.json`` (every figure's numbers), ``report.md``
(tables, with the paper's figures beside ours), and PNG plots (entropy histogram, entropy by
position, the most frequent pieces among high- and low-entropy tokens). Matplotlib without a
display."""

import json
import math
from pathlib import Path

import torch

from megatron_fork.analysis.entropy_statistics import (
    PAPER_BELOW_001,
    PAPER_P80,
    entropy_by_position,
    summarize_entropy,
)
from megatron_fork.analysis.figure_files import save_figure
from megatron_fork.analysis.forking_tokens import frequent_pieces
from megatron_fork.analysis.token_table import read_token_table
from megatron_fork.atomic_files import write_text_atomically


def report_numbers(table_path: str | Path, rho: float = 0.2, top: int = 20) -> dict:
    """Every number of the report (JSON-ready); ``rho``: the share of tokens that are forking
    tokens (the trainer's ``loss.rho``)."""
    table, metadata = read_token_table(table_path, ["entropy", "position", "piece"])
    columns = table.to_pydict()
    entropy = torch.tensor(columns["entropy"], dtype=torch.float64)
    if entropy.numel() == 0:
        raise ValueError(f"{table_path}: the token table has no tokens")
    positions = torch.tensor(columns["position"])
    return {
        "metadata": metadata,
        "summary": summarize_entropy(entropy, rho).as_dict(),
        "paper": {"share_below_001": PAPER_BELOW_001, "p80": PAPER_P80},
        "by_position": entropy_by_position(entropy, positions, bucket=8),
        "forking_pieces": frequent_pieces(columns["piece"], entropy, rho, top),
        "histogram": _histogram(entropy),
    }


def _histogram(entropy: torch.Tensor, bins: int = 40) -> dict:
    """Counts over log-spaced bins from 1e-4 nats to the largest entropy (and below 1e-4):
    every token is counted (the last edge is the largest entropy itself, not 10**log10 of it,
    which may round below it and leave the largest token out)."""
    largest = max(float(entropy.max()), 1e-3)
    edges = torch.logspace(-4, math.log10(largest), bins + 1, dtype=torch.float64)
    edges[0], edges[-1] = 1e-4, largest  # exactly the clamp floor and the largest value
    counts = torch.histogram(entropy.clamp(min=1e-4), bins=edges).hist
    return {"edges": edges.tolist(), "counts": counts.long().tolist()}


def _markdown(numbers: dict) -> str:
    s, meta = numbers["summary"], numbers["metadata"]
    step = meta.get("weight_version")
    weights = "none (not a trainer checkpoint)" if step is None else f"training step {step}"
    lines = [
        f"# Token entropy of `{meta.get('model', '?')}`",
        "",
        f"{s['tokens']} response tokens, temperature {meta.get('temperature')}, prompt set "
        f"`{meta.get('prompt_set', '')}`, weight version {weights}.",
        "",
        "| figure | this model | the paper (Qwen3-8B) |",
        "|---|---|---|",
        f"| share of tokens below 0.01 nats | {s['share_below_001']:.2%} | {PAPER_BELOW_001:.2%} |",
        f"| 80th percentile of entropy | {s['percentiles'].get('p80', float('nan')):.3f} | "
        f"{PAPER_P80} |",
        f"| smallest entropy of the top {s['rho']:.0%} ({s['top_tokens']} tokens) | "
        f"{s['top_threshold']:.3f} | |",
        f"| mean entropy | {s['mean']:.3f} | |",
        "",
        "| group | piece | count | share of the group |",
        "|---|---|---|---|",
    ]
    for group in ("high", "low"):
        for piece, count, share in numbers["forking_pieces"][group][:10]:
            lines.append(f"| {group} | `{piece}` | {count} | {share:.1%} |")
    return "\n".join(lines) + "\n"


def _plots(numbers: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = numbers["histogram"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    axes[0].stairs(hist["counts"], hist["edges"])
    axes[0].set(xscale="log", xlabel="entropy (nats)", ylabel="tokens", title="entropy")
    summary = numbers["summary"]
    threshold, share = summary["top_threshold"], summary["rho"]
    axes[0].axvline(threshold, color="red", label=f"top {share:.0%}: >= {threshold:.3f}")
    axes[0].legend()
    rows = numbers["by_position"]
    axes[1].plot([r[0] for r in rows], [r[1] for r in rows], marker="o")
    axes[1].set(xlabel="position in the response", ylabel="mean entropy", title="by position")
    pieces = numbers["forking_pieces"]["high"][:15][::-1]
    axes[2].barh([repr(p)[1:-1] for p, _, _ in pieces], [n for _, n, _ in pieces])
    axes[2].set(xlabel="count", title="most frequent high-entropy pieces")
    fig.tight_layout()
    save_figure(fig, out / "entropy.png", dpi=110)


def write_entropy_report(table_path: str | Path, out_dir: str | Path, rho: float = 0.2) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    numbers = report_numbers(table_path, rho)
    write_text_atomically(out / "stats.json", json.dumps(numbers, indent=2) + "\n")
    write_text_atomically(out / "report.md", _markdown(numbers))
    _plots(numbers, out)
    return out
