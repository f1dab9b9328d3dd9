"""A finished run's report: ``summary.json`` (accuracy before/after, entropy, selected
fraction, steps, wall time) and ``curves.png`` (reward, accuracy and entropy over steps), read
from the run's ``metrics.jsonl``. Written to a temporary name and renamed into place."""

import json
import math
import os
from pathlib import Path

from megatron_fork.atomic_files import write_text_atomically
from megatron_fork.rl.metrics_log import METRICS_FILE, read_metrics

SUMMARY_FILE = "summary.json"
PLOT_FILE = "curves.png"
ACCURACY = "eval/avg_at_k"


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [s for s, _ in points], [v for _, v in points]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def summarize(records: list[dict]) -> dict:
    """The summary of one run's metrics records (base = step 0's evaluation)."""
    steps, accuracy = _series(records, ACCURACY)
    if not steps or steps[0] != 0:
        raise ValueError(f"the run has no step-0 evaluation ({ACCURACY} at step 0)")
    train = [r for r in records if r["step"] > 0]
    head, tail = train[: max(1, len(train) // 10)], train[-max(1, len(train) // 10) :]
    return {
        "base_accuracy": accuracy[0],
        "final_accuracy": accuracy[-1],
        "accuracy_gain": accuracy[-1] - accuracy[0],
        "final_eval_step": steps[-1],
        "rl_steps": max((r["step"] for r in train), default=0),
        "entropy_mean_first_steps": _mean([r.get("train/entropy_mean") for r in head]),
        "entropy_mean_last_steps": _mean([r.get("train/entropy_mean") for r in tail]),
        "selected_fraction_mean": _mean([r.get("train/selected_fraction") for r in train]),
        "rollout_accuracy_first_steps": _mean([r.get("rollout/accuracy") for r in head]),
        "rollout_accuracy_last_steps": _mean([r.get("rollout/accuracy") for r in tail]),
    }


def plot_curves(records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("reward", ("rollout/reward_mean", "rollout/accuracy")),
        ("held-out accuracy (avg@k)", (ACCURACY, "eval/pass_at_k")),
        ("entropy (nats)", ("train/entropy_mean", "train/entropy_selected_mean")),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (label, keys) in zip(axes, panels, strict=True):
        for key in keys:
            xs, ys = _series(records, key)
            ax.plot(xs, ys, marker="o" if key.startswith("eval/") else None, label=key)
        ax.set_xlabel("RL step")
        ax.set_title(label)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def write_run_report(run_dir: str | Path, report_dir: str | Path, extra: dict) -> dict:
    """Summarise ``run_dir/metrics.jsonl`` into ``report_dir`` (summary + plot); returns the
    summary (with ``extra`` merged in, e.g. wall_seconds)."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    records = read_metrics(Path(run_dir) / METRICS_FILE)
    summary = {**summarize(records), **extra}
    plot_curves(records, report_dir / PLOT_FILE, extra.get("title", str(run_dir)))
    write_text_atomically(
        report_dir / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n"
    )
    return summary
