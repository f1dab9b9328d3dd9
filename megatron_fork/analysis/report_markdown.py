"""``report.md`` of an analysis folder: every table of the report (per-model statistics beside
the paper's figures, forking pieces, evolution under RL, the temperature sweep) and links to
its figures, from the same numbers as the JSON files beside it."""

from megatron_fork.analysis.entropy_statistics import PAPER_BELOW_001, PAPER_P80
from megatron_fork.analysis.figures import PAPER_OVERLAP


def analysis_markdown(numbers: dict) -> str:
    """``numbers``: {"settings", "models": {name: stats.json}, "evolution"?, "sweep"?}."""
    lines = ["# Entropy patterns", "", _settings(numbers["settings"]), ""]
    lines += _models(numbers["models"])
    if numbers.get("evolution"):
        lines += _evolution(numbers["evolution"])
    if numbers.get("sweep"):
        lines += _sweep(numbers["sweep"])
    return "\n".join(lines) + "\n"


def _settings(s: dict) -> str:
    text = (
        f"Prompts: {s['prompts']} of `{s['prompt_set']}`, one response each, at most "
        f"{s['max_new_tokens']} new tokens, temperature {s['temperature']}; forking tokens = "
        f"the top {s['rho']:.0%} by entropy (rho = {s['rho']:g}, the trainer's count: exactly "
        f"ceil(rho * N) of N tokens, ties to the earlier token). Entropies are teacher-forced "
        f"through the trainer's op. Wall time {s.get('wall_seconds', float('nan')):.0f} s."
    )
    if s.get("prompt_rows"):  # rows of the prompt file were skipped: say which and why
        text += f"\n\nPrompt file: {s['prompt_rows']}."
    return text


def _models(models: dict) -> list[str]:
    names = list(models)
    lines = [
        "## Token entropy per model (each on its own responses)",
        "",
        "| figure | " + " | ".join(f"`{n}`" for n in names) + " | the paper (Qwen3-8B) |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    rows = [
        ("response tokens", lambda s: f"{s['summary']['tokens']}", ""),
        (
            "share below 0.01 nats",
            lambda s: f"{s['summary']['share_below_001']:.2%}",
            f"{PAPER_BELOW_001:.2%}",
        ),
        ("80th percentile", lambda s: f"{s['summary']['percentiles']['p80']:.3f}", f"{PAPER_P80}"),
        (
            f"smallest entropy of the top {models[names[0]]['summary']['rho']:.0%} (threshold)",
            lambda s: f"{s['summary']['top_threshold']:.3f}",
            "",
        ),
        ("mean entropy", lambda s: f"{s['summary']['mean']:.3f}", ""),
    ]
    for label, cell, paper in rows:
        lines.append(f"| {label} | " + " | ".join(cell(models[n]) for n in names) + f" | {paper} |")
    lines += ["", "Most frequent pieces among the forking tokens (share of the group):", ""]
    lines += ["| rank | " + " | ".join(f"`{n}` high | `{n}` low" for n in names) + " |"]
    lines += ["|---|" + "---|---|" * len(names)]
    for rank in range(8):
        cells = []
        for name in names:
            for group in ("high", "low"):
                pieces = models[name]["forking_pieces"][group]
                cells.append(_piece(pieces[rank]) if rank < len(pieces) else "")
        lines.append(f"| {rank + 1} | " + " | ".join(cells) + " |")
    lines.append("")
    for name in names:
        lines += [
            f"![entropy of {name}]({name}/entropy.png)",
            "",
            f"![{name}'s responses by entropy]({name}/responses.png)",
            "",
            f"Interactive page: [{name}/responses.html]({name}/responses.html)",
            "",
        ]
    return lines


def _piece(entry) -> str:
    piece, _, share = entry
    shown = piece.replace("|", "\\|").replace("`", "'")
    return f"`{shown}` {share:.0%}"


def _evolution(evolution: dict) -> list[str]:
    c = evolution["comparison"]
    lines = [
        "## Evolution under RL (the same responses, scored by each model)",
        "",
        f"The base model's {c['tokens']} response tokens scored by `{c['after']}`:",
        "",
        "| figure | value | the paper |",
        "|---|---|---|",
        f"| top-{c['rho']:.0%} position overlap | {c['overlap']:.1%} | "
        f"> {PAPER_OVERLAP:.0%} (secondary) |",
        f"| threshold (smallest top-{c['rho']:.0%} entropy) before / after | "
        f"{c['threshold_before']:.3f} / "
        f"{c['threshold_after']:.3f} | |",
        f"| mean entropy before / after | {c['mean_before']:.3f} / {c['mean_after']:.3f} | |",
        "",
        "| entropy bucket of the base (nats) | tokens | mean change (nats) |",
        "|---|---|---|",
    ]
    for b in c["by_bucket"]:
        lines.append(f"| {b['bucket']} | {b['tokens']} | {b['mean_change']:+.4f} |")
    lines += ["", "![entropy before vs after](evolution_scatter.png)", ""]
    if len(evolution["series"]) > 1:
        lines += [
            "| checkpoint | step | overlap with the base | threshold | mean entropy |",
            "|---|---|---|---|---|",
        ]
        for r in evolution["series"]:
            step = "" if r["step"] is None else r["step"]
            lines.append(
                f"| `{r['label']}` | {step} | {r['overlap']:.1%} | "
                f"{r['threshold']:.3f} | {r['mean_entropy']:.3f} |"
            )
        lines += ["", "![overlap vs step](overlap_vs_step.png)", ""]
    return lines


def _sweep(sweep: dict) -> list[str]:
    config = sweep["config"]
    lows, highs = config["low_temperatures"], config["high_temperatures"]
    value = {(c["t_high"], c["t_low"]): c for c in sweep["cells"]}
    k = config["samples_per_prompt"]
    lines = [
        "## Decoding temperature by entropy",
        "",
        f"`{sweep['model']}` on {sweep['prompts']} eval prompts, avg@{k} (pass@{k}); T_high at "
        f"positions whose entropy is >= {sweep['threshold']:.3f} nats ({sweep['threshold_source']}"
        f"), T_low elsewhere; top_p {config['top_p']}, the same seeds in every cell."
        + (f" Eval file: {sweep['eval_rows']}." if sweep.get("eval_rows") else ""),
        "",
        "| T_high \\ T_low | " + " | ".join(f"{t:g}" for t in lows) + " |",
        "|---|" + "---|" * len(lows),
    ]
    for high in highs:
        cells = [value[(high, low)] for low in lows]
        lines.append(
            f"| {high:g} | "
            + " | ".join(f"{c['avg_at_k']:.3f} ({c['pass_at_k']:.2f})" for c in cells)
            + " |"
        )
    lines += ["", "![accuracy per (T_high, T_low)](sweep.png)", ""]
    return lines
