"""How token entropy moves under RL, on the SAME responses: two token tables holding the same
tokens (one model's responses, scored again by another with ``collect_given``) -> the overlap of
their top-rho positions (``overlap.top_positions``: the trainer's ceil(rho * N) tokens; the paper
reports > 86% between the base model and its RL checkpoints), the mean change per entropy
bucket of the first, a scatter of entropy before vs after, and over a series of checkpoints the
overlap with the first vs training step. Thresholds are the smallest entropy of each top set."""

import torch

from megatron_fork.analysis.model_source import check_same_vocabulary
from megatron_fork.analysis.overlap import (
    change_by_bucket,
    top_overlap,
    top_positions,
    top_threshold,
)
from megatron_fork.analysis.token_table import entropy_column, read_token_table


def _entropies(path) -> tuple[torch.Tensor, object, dict]:
    table, metadata = read_token_table(path, ["sample", "token_id", "entropy"])
    entropy = entropy_column(table)  # [N]
    return entropy, table.select(["sample", "token_id"]), metadata


def _same_tokens(before_path, after_path):
    """Both tables' entropies [N], after checking they hold the same tokens in the same order
    and come from models of one vocabulary."""
    before, before_rows, before_meta = _entropies(before_path)
    after, after_rows, after_meta = _entropies(after_path)
    check_same_vocabulary(
        before_meta.get("model", str(before_path)), before_meta.get("vocabulary", {}),
        after_meta.get("model", str(after_path)), after_meta.get("vocabulary", {}),
    )  # fmt: skip
    if not before_rows.equals(after_rows):
        raise ValueError(
            f"{before_path} and {after_path} do not hold the same responses ({before.numel()} "
            f"vs {after.numel()} tokens or other ids): score one model's table with the other "
            "model (collect_given) first"
        )
    if before.numel() == 0:
        raise ValueError(f"{before_path}: the token table has no tokens")
    return before, after, before_meta, after_meta


def compare_tables(before_path, after_path, rho: float = 0.2, scatter_points: int = 4000) -> dict:
    """Every number of the before/after comparison (JSON-ready); the scatter keeps at most
    ``scatter_points`` tokens, drawn with a fixed seed."""
    before, after, before_meta, after_meta = _same_tokens(before_path, after_path)
    keep = torch.randperm(before.numel(), generator=torch.Generator().manual_seed(0))
    keep = keep[:scatter_points].sort().values
    top = top_positions(before, rho)
    return {
        "before": before_meta.get("model"),
        "after": after_meta.get("model"),
        "tokens": before.numel(),
        "rho": rho,
        "overlap": top_overlap(before, after, rho),
        "threshold_before": top_threshold(before, rho),
        "threshold_after": top_threshold(after, rho),
        "mean_before": float(before.mean()),
        "mean_after": float(after.mean()),
        "by_bucket": [
            {"bucket": bucket, "mean_change": delta, "tokens": n}
            for bucket, delta, n in change_by_bucket(before, after)
        ],
        "scatter": {
            "before": before[keep].tolist(),
            "after": after[keep].tolist(),
            "top_before": top[keep].tolist(),
        },
    }


def overlap_series(reference_path, tables: list[tuple[str, int | None, str]], rho=0.2) -> list:
    """For each (label, step, table) scoring the reference table's tokens: the overlap of its
    top positions with the reference's, its threshold (smallest top entropy), mean entropy."""
    rows = []
    for label, step, path in tables:
        before, after, _, _ = _same_tokens(reference_path, path)
        rows.append(
            {
                "label": label,
                "step": step,
                "overlap": top_overlap(before, after, rho),
                "threshold": top_threshold(after, rho),
                "mean_entropy": float(after.mean()),
            }
        )
    return rows
