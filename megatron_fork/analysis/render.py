"""Responses rendered by entropy: a few samples of a token table with each token shaded by its
entropy, the table's top-rho tokens (``overlap.top_positions`` over every token of the table:
exactly the trainer's ceil(rho * N), ties to the earlier token) outlined and bold, as a
self-contained HTML page (escaped text, inline CSS, a colour scale, a tooltip with each token's
entropy and log-prob) and as a PNG (matplotlib, no display).
"""

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_fork.analysis.entropy_statistics import quantile_higher
from megatron_fork.analysis.figure_files import save_figure
from megatron_fork.analysis.overlap import top_positions
from megatron_fork.analysis.token_table import entropy_column, iter_row_groups, read_token_table
from megatron_fork.atomic_files import write_text_atomically

COLORMAP = "YlOrRd"
SCALE_QUANTILE = 0.99
"""The colour scale runs from 0 to this quantile of the table's entropies (outliers saturate)."""


@dataclass(frozen=True)
class Shown:
    """The tokens of a few samples, with what shading and marking them needs."""

    samples: list
    """[{"sample": id, "prompt": text, "tokens": [{"text", "entropy", "logprob", "top"}]}]"""
    threshold: float
    """The smallest entropy among the table's top-rho tokens (the marked ones)."""
    scale_max: float
    rho: float
    metadata: dict


def shown_samples(table_path, samples: int = 6, rho: float = 0.2) -> Shown:
    """The first ``samples`` samples of the table, read a row group at a time."""
    table, metadata = read_token_table(table_path, ["entropy"])
    entropy = entropy_column(table)  # [N], the table's row order
    if entropy.numel() == 0:
        raise ValueError(f"{table_path}: the token table has no tokens")
    top = top_positions(entropy, rho)  # [N] bool
    threshold = float(entropy[top].min())
    scale_max = max(quantile_higher(entropy, SCALE_QUANTILE), threshold, 1e-6)
    shown: dict[str, dict] = {}
    index = 0  # the row's place in the whole table
    for group in iter_row_groups(table_path):
        for row in group.to_pylist():
            if row["sample"] not in shown and len(shown) == samples:
                return Shown(list(shown.values()), threshold, scale_max, rho, metadata)
            entry = shown.setdefault(
                row["sample"], {"sample": row["sample"], "prompt": row["prompt"], "tokens": []}
            )
            text = row["text"] or row["piece"]  # a special token may decode to ""
            entry["tokens"].append(
                {
                    "text": text,
                    "entropy": float(row["entropy"]),
                    "logprob": float(row["logprob"]),
                    "top": bool(top[index]),
                }
            )
            index += 1
    return Shown(list(shown.values()), threshold, scale_max, rho, metadata)


def _colour(value: float, scale_max: float) -> str:
    import matplotlib
    from matplotlib.colors import to_hex

    return to_hex(matplotlib.colormaps[COLORMAP](min(value / scale_max, 1.0)))


_CSS = """body{font-family:system-ui,sans-serif;max-width:64em;margin:2em auto;color:#222}
.response{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:2;font-size:15px}
.prompt{font-family:ui-monospace,monospace;color:#666;white-space:pre-wrap}
.tok{padding:2px 0;border-radius:2px}
.top{outline:2px solid #111;font-weight:bold}
.bar{display:inline-block;width:18em;height:1em;vertical-align:middle;background:%s}
.sample{margin:1.2em 0;padding:.6em;border-top:1px solid #ddd}"""


def html_page(shown: Shown) -> str:
    """The page's text (every piece of data escaped)."""
    e = html.escape
    stops = ", ".join(_colour(shown.scale_max * i / 8, shown.scale_max) for i in range(9))
    meta = shown.metadata
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Token entropy: {e(str(meta.get('model', '')))}</title>",
        f"<style>{_CSS % f'linear-gradient(to right, {stops})'}</style></head><body>",
        "<h1>Responses shaded by token entropy</h1>",
        f"<p>Model <code>{e(str(meta.get('model', '')))}</code>, temperature "
        f"{e(str(meta.get('temperature', '')))}. Each token's background is its entropy "
        f"(nats); the table's top {shown.rho:.0%} of tokens by entropy (entropy &ge; "
        f"{shown.threshold:.3f}; the trainer's count, ties to the earlier token) are outlined "
        "and bold. Hover a token for its entropy and log-prob.</p>",
        f'<p class="legend">0 <span class="bar"></span> &ge; {shown.scale_max:.3f} nats '
        f'&nbsp; <span class="top">outlined</span> top {shown.rho:.0%}</p>',
    ]
    for sample in shown.samples:
        parts.append(f'<div class="sample"><h2>{e(sample["sample"])}</h2>')
        parts.append(f'<div class="prompt">prompt: {e(sample["prompt"] or "")}</div>')
        spans = [_span(token, shown.scale_max) for token in sample["tokens"]]
        parts.append(f'<div class="response">{"".join(spans)}</div></div>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _span(token: dict, scale_max: float) -> str:
    title = f"entropy {token['entropy']:.4f} nats, log-prob {token['logprob']:.4f}"
    classes = "tok top" if token["top"] else "tok"
    colour = _colour(token["entropy"], scale_max)
    return (
        f'<span class="{classes}" style="background:{colour}" title="{title}">'
        f"{html.escape(token['text'])}</span>"
    )


def write_html(table_path, out_path, samples: int = 6, rho: float = 0.2) -> Path:
    """The page, and beside it ``<name>.json`` with the numbers it shows."""
    shown = shown_samples(table_path, samples, rho)
    out = Path(out_path)
    write_text_atomically(out, html_page(shown))
    write_text_atomically(out.with_suffix(".json"), json.dumps(asdict(shown), indent=1) + "\n")
    return out


def write_png(table_path, out_path, samples: int = 4, rho: float = 0.2, width: int = 72):
    """The first ``samples`` responses drawn as rows of tokens ``width`` characters wide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    shown = shown_samples(table_path, samples, rho)
    lines = _layout(shown, width)
    width = max(40, max(c + len(t) for items in lines for c, t, _ in items if items))  # used
    # One character of DejaVu Sans Mono is 0.602 em: the font size makes it one x unit.
    char, row_inches = 0.1, 0.3  # inches
    fig = plt.figure(figsize=(char * (width + 1) / 0.98, row_inches * len(lines) + 1.2))
    bottom = 1.0 / fig.get_figheight()
    ax = fig.add_axes((0.01, bottom, 0.98, 1 - bottom - 0.02))
    fontsize = char * 72 / 0.602
    ax.set(xlim=(-0.5, width + 0.5), ylim=(len(lines), -0.5))
    ax.axis("off")
    _draw_tokens(ax, lines, shown.scale_max, fontsize)
    bar = fig.add_axes((0.25, 0.55 / fig.get_figheight(), 0.5, 0.12 / fig.get_figheight()))
    mappable = ScalarMappable(Normalize(0, shown.scale_max), COLORMAP)
    fig.colorbar(mappable, cax=bar, orientation="horizontal")
    bar.set_xlabel(f"entropy (nats); outlined: top {shown.rho:.0%} (>= {shown.threshold:.3f})")
    save_figure(fig, out_path)
    return Path(out_path)


def _draw_tokens(ax, lines, scale_max: float, fontsize: float) -> None:
    """Each token a box shaded by its entropy (outlined when in the top), its text on top."""
    import matplotlib.pyplot as plt

    for row, items in enumerate(lines):
        for column, text, token in items:
            if token is not None:
                edge = "#111" if token["top"] else "none"
                ax.add_patch(
                    plt.Rectangle(
                        (column, row - 0.4),
                        len(text),
                        0.8,
                        linewidth=1.1,
                        facecolor=_colour(token["entropy"], scale_max),
                        edgecolor=edge,
                    )
                )
            ax.text(
                column,
                row,
                text,
                family="DejaVu Sans Mono",
                fontsize=fontsize,
                va="center",
                color="#666" if token is None else "#111",
                parse_math=False,
                weight="bold" if token and token["top"] else "normal",
            )


def _layout(shown: Shown, width: int) -> list[list[tuple[int, str, dict | None]]]:
    """Rows of (column, text, token or None for prompt text), wrapping at ``width``."""
    lines = []
    for sample in shown.samples:
        lines.append([(0, f"{sample['sample']}  {sample['prompt'] or ''}"[:width], None)])
        current, column = [], 0
        for token in sample["tokens"]:
            text = token["text"].replace("\n", "\u21b5")
            if column + len(text) > width and current:
                lines.append(current)
                current, column = [], 0
            current.append((column, text, token))
            column += len(text)
        lines.append(current)
    return lines
