"""Evolution under RL on hand-worked token tables: overlap, thresholds, change per bucket and
overlap vs step as worked by hand; tables of different responses or vocabularies are refused,
naming both; the figures are written."""

import json
from types import SimpleNamespace

import pytest
import torch

from megatron_fork.analysis.evolution import compare_tables, overlap_series
from megatron_fork.analysis.figures import plot_evolution, plot_overlap_series, plot_sweep
from megatron_fork.analysis.model_source import checkpoint_step
from megatron_fork.analysis.token_table import Detokenizer, TokenTableWriter

BEFORE = torch.tensor([0.0, 0.001, 0.005, 0.009, 0.2, 0.4, 0.6, 0.8, 1.5, 2.5])
VOCAB = {"vocab_size": 23, "tokenizer_sha256": "abc", "tokenizer_tokens": 23}
WORDS = Detokenizer(lambda t: str(t), lambda ids: " ".join(map(str, ids)))


def _table(path, entropy, model="base", vocab=VOCAB, tokens=tuple(range(10))):
    samples = [
        SimpleNamespace(request_id="p0#0", prompt_ids=(1, 2), output_ids=tokens[:6]),
        SimpleNamespace(request_id="p1#0", prompt_ids=(3,), output_ids=tokens[6:]),
    ]
    scores = [(torch.zeros(6), entropy[:6]), (torch.zeros(4), entropy[6:])]
    metadata = {"model": model, "vocabulary": vocab, "temperature": 1.0}
    with TokenTableWriter(path, metadata) as table:
        table.write(samples, scores, WORDS)
    return path


def test_comparison_by_hand(tmp_path):
    after = BEFORE.clone()
    after[7], after[3] = 0.0, 3.0  # token 3 enters the top, pushing out token 8
    before_path = _table(tmp_path / "a.parquet", BEFORE)
    after_path = _table(tmp_path / "b.parquet", after, model="rl")
    c = compare_tables(before_path, after_path, rho=0.2, scatter_points=4)
    # k = ceil(0.2 * 10) = 2. top(before) = {8, 9} (1.5, 2.5); top(after) = {3, 9} (3.0, 2.5):
    # shared {9}, 1 / 2. Thresholds: the smallest entropy of each top set, 1.5 and 2.5.
    assert c["overlap"] == pytest.approx(1 / 2) and c["tokens"] == 10
    assert c["threshold_before"] == pytest.approx(1.5) and c["threshold_after"] == 2.5
    assert c["before"] == "base" and c["after"] == "rl"
    assert c["mean_after"] - c["mean_before"] == pytest.approx((3.0 - 0.009 - 0.8) / 10)
    buckets = {b["bucket"]: (b["mean_change"], b["tokens"]) for b in c["by_bucket"]}
    assert buckets["[0, 0.01)"] == pytest.approx(((3.0 - 0.009) / 4, 4))
    assert buckets["[0.5, 1)"] == pytest.approx(((0.0 - 0.8) / 2, 2))
    assert len(c["scatter"]["before"]) == 4  # subsampled
    for before, after_value, top in zip(*c["scatter"].values(), strict=True):
        index = int((BEFORE - before).abs().argmin())
        assert after_value == pytest.approx(float(after[index])) and top == (index >= 8)


def test_overlap_series_by_hand(tmp_path):
    base = _table(tmp_path / "base.parquet", BEFORE)
    middle = BEFORE.clone()
    middle[9] = 0.0  # top(middle) = {8, 7} (1.5, 0.8); shared with {8, 9}: {8}, 1 / 2
    last = BEFORE.flip(0)  # top = {0, 1} (2.5, 1.5): none shared
    tables = [
        ("base", 0, base),
        ("step 10", 10, _table(tmp_path / "m.parquet", middle)),
        ("rl", None, _table(tmp_path / "l.parquet", last)),
    ]
    series = overlap_series(base, tables, rho=0.2)
    assert [r["overlap"] for r in series] == pytest.approx([1.0, 1 / 2, 0.0])
    assert [r["step"] for r in series] == [0, 10, None]
    assert series[1]["threshold"] == pytest.approx(0.8)  # min of {1.5, 0.8}
    png = plot_overlap_series(series, 0.2, tmp_path / "series.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_different_responses_or_vocabularies_are_refused(tmp_path):
    base = _table(tmp_path / "a.parquet", BEFORE)
    other_tokens = _table(tmp_path / "b.parquet", BEFORE, tokens=(0, 1, 2, 3, 4, 5, 6, 7, 8, 11))
    with pytest.raises(ValueError, match="do not hold the same responses"):
        compare_tables(base, other_tokens)
    other_vocab = {**VOCAB, "vocab_size": 60}
    wide = _table(tmp_path / "c.parquet", BEFORE, model="wide", vocab=other_vocab)
    with pytest.raises(ValueError, match="base and wide have different vocabularies"):
        compare_tables(base, wide)
    retokenized = {**VOCAB, "tokenizer_sha256": "def"}
    other = _table(tmp_path / "d.parquet", BEFORE, model="other", vocab=retokenized)
    with pytest.raises(ValueError, match="base and other .*tokenizer: abc vs def"):
        overlap_series(base, [("other", 1, other)])


def test_figures_and_checkpoint_steps(tmp_path):
    c = compare_tables(_table(tmp_path / "a.parquet", BEFORE), tmp_path / "a.parquet")
    assert c["overlap"] == 1.0
    assert plot_evolution(c, tmp_path / "e.png").stat().st_size > 10_000
    sweep = {
        "config": {"high_temperatures": [0.5, 1.0], "low_temperatures": [1.0],
                   "samples_per_prompt": 2},
        "threshold": 0.3,
        "cells": [{"t_high": 0.5, "t_low": 1.0, "avg_at_k": 0.25},
                  {"t_high": 1.0, "t_low": 1.0, "avg_at_k": 0.5}],
    }  # fmt: skip
    assert plot_sweep(sweep, tmp_path / "s.png").stat().st_size > 5_000
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "trainer_state.json").write_text(json.dumps({"step": 40}))
    assert checkpoint_step(tmp_path / "ckpt") == 40 and checkpoint_step(tmp_path) is None
