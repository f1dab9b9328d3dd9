"""The analysis report's comparison figures, drawn from the same JSON-ready numbers the report
writes beside them: entropy before vs after RL on the same tokens (scatter + mean change per
bucket), overlap of the top positions vs training step, and accuracy per (T_high, T_low)."""

from pathlib import Path

from megatron_fork.analysis.figure_files import save_figure

PAPER_OVERLAP = 0.86
"""The paper's overlap of top-20% positions between the base and RL models (secondary)."""
FLOOR = 1e-4
"""Entropies below this are drawn at it on the log axes."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_evolution(comparison: dict, out_path) -> Path:
    """Left: each token's entropy under the first model vs the second (top positions of the
    first in red); right: mean change of entropy per bucket of the first model's entropy."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    scatter = comparison["scatter"]
    before = [max(v, FLOOR) for v in scatter["before"]]
    after = [max(v, FLOOR) for v in scatter["after"]]
    colours = ["#c0392b" if top else "#7f8c8d" for top in scatter["top_before"]]
    left.scatter(before, after, s=4, c=colours, alpha=0.5, linewidths=0)
    low, high = min(before + after), max(before + after)
    left.plot([low, high], [low, high], color="black", linewidth=0.8, label="no change")
    left.axvline(comparison["threshold_before"], color="#c0392b", linestyle=":", linewidth=1)
    left.set(
        xscale="log",
        yscale="log",
        xlabel=f"entropy, {_short(comparison['before'])}",
        ylabel=f"entropy, {_short(comparison['after'])}",
        title=f"same {comparison['tokens']} tokens: top-{comparison['rho']:.0%} "
        f"overlap {comparison['overlap']:.1%}",
    )
    left.legend(loc="upper left", fontsize=8)
    buckets = comparison["by_bucket"]
    right.bar([b["bucket"] for b in buckets], [b["mean_change"] for b in buckets], color="#2c7fb8")
    for index, bucket in enumerate(buckets):
        right.annotate(
            f"{bucket['tokens']}",
            (index, bucket["mean_change"]),
            ha="center",
            va="bottom" if bucket["mean_change"] >= 0 else "top",
            fontsize=8,
        )
    right.axhline(0, color="black", linewidth=0.8)
    right.set(
        xlabel="entropy bucket of the first model (nats)",
        ylabel="mean change (nats)",
        title="mean entropy change per bucket (labels: token counts)",
    )
    right.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return save_figure(fig, out_path)


def plot_overlap_series(series: list[dict], rho: float, out_path) -> Path:
    """Overlap of each checkpoint's top positions with the first model's, by training step
    (checkpoints without a step are placed in order after the last known one)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    steps = _x_positions(series)
    ax.plot(steps, [row["overlap"] for row in series], marker="o", color="#2c7fb8")
    for x, row in zip(steps, series, strict=True):
        ax.annotate(
            f"{row['overlap']:.1%}",
            (x, row["overlap"]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    ax.axhline(
        PAPER_OVERLAP,
        color="#c0392b",
        linestyle="--",
        linewidth=1,
        label="paper: > 86% (Qwen3, secondary)",
    )
    ax.set(
        xlabel="RL step",
        ylabel=f"top-{rho:.0%} overlap with the base",
        ylim=(min(0.5, min(r["overlap"] for r in series) - 0.05), 1.04),
        title="high-entropy positions kept under RL",
    )
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_path)


def plot_sweep(sweep: dict, out_path) -> Path:
    """Heatmap of avg@k over (T_low columns, T_high rows), each cell annotated."""
    plt = _pyplot()
    highs = sweep["config"]["high_temperatures"]
    lows = sweep["config"]["low_temperatures"]
    value = {(c["t_high"], c["t_low"]): c["avg_at_k"] for c in sweep["cells"]}
    grid = [[value[(h, low)] for low in lows] for h in highs]
    fig, ax = plt.subplots(figsize=(1.3 * len(lows) + 2.4, 1.0 * len(highs) + 1.6))
    image = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
    for i, row in enumerate(grid):
        for j, accuracy in enumerate(row):
            ax.text(
                j,
                i,
                f"{accuracy:.3f}",
                ha="center",
                va="center",
                fontsize=9,
                color="white"
                if accuracy < (max(map(max, grid)) + min(map(min, grid))) / 2
                else "black",
            )
    ax.set_xticks(range(len(lows)), [f"{t:g}" for t in lows])
    ax.set_yticks(range(len(highs)), [f"{t:g}" for t in highs])
    k = sweep["config"]["samples_per_prompt"]
    ax.set(
        xlabel="T_low (entropy below the threshold)",
        ylabel="T_high (at or above)",
        title=f"avg@{k}, threshold {sweep['threshold']:.3f} nats",
    )
    fig.colorbar(image, ax=ax, label=f"avg@{k}")
    fig.tight_layout()
    return save_figure(fig, out_path)


def _x_positions(series: list[dict]) -> list[float]:
    x, last = [], 0.0
    for row in series:
        last = float(row["step"]) if row["step"] is not None else last + 1.0
        x.append(last)
    return x


def _short(model) -> str:
    parts = Path(str(model)).parts
    return "/".join(parts[-2:]) if parts else str(model)
