"""How token entropy moves under RL, on the SAME responses: two token tables holding the same
tokens (one model's responses, scored again by another with ``collect_given``) -> the overlap of
their top-(1 - rho) positions (the paper reports > 86% between the base model and its RL
checkpoints), the mean change per entropy bucket of the first, a scatter of entropy before vs
after, and over a series of checkpoints the overlap with the first vs training step."""

import json
from pathlib import Path

import torch

from megatron_fork.analysis.entropy_statistics import quantile_higher
from megatron_fork.analysis.model_source import check_same_vocabulary
from megatron_fork.analysis.overlap import change_by_bucket, top_overlap, top_positions
from megatron_fork.analysis.token_table import entropy_column, read_token_table

TRAINER_STATE = "trainer_state.json"


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


def compare_tables(before_path, after_path, rho: float = 0.8, scatter_points: int = 4000) -> dict:
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
        "threshold_before": quantile_higher(before, rho),
        "threshold_after": quantile_higher(after, rho),
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


def checkpoint_step(source) -> int | None:
    """The training step of a trainer checkpoint (its ``trainer_state.json``), else None."""
    state = Path(source) / TRAINER_STATE
    return int(json.loads(state.read_text())["step"]) if state.is_file() else None


def overlap_series(reference_path, tables: list[tuple[str, int | None, str]], rho=0.8) -> list:
    """For each (label, step, table) scoring the reference table's tokens: the overlap of its
    top positions with the reference's, its threshold and mean entropy."""
    rows = []
    for label, step, path in tables:
        before, after, _, _ = _same_tokens(reference_path, path)
        rows.append(
            {
                "label": label,
                "step": step,
                "overlap": top_overlap(before, after, rho),
                "threshold": quantile_higher(after, rho),
                "mean_entropy": float(after.mean()),
            }
        )
    return rows
