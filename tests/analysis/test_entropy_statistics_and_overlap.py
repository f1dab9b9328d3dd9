"""Quantiles, summaries, position buckets and top-position overlap on hand-worked examples."""

import json

import pytest
import torch

from megatron_fork.analysis.entropy_statistics import (
    entropy_by_position,
    quantile_higher,
    summarize_entropy,
)
from megatron_fork.analysis.overlap import change_by_bucket, top_overlap, top_positions

# Ten tokens: four near-deterministic (< 0.01), the rest spread out.
ENTROPY = torch.tensor([0.0, 0.001, 0.005, 0.009, 0.2, 0.4, 0.6, 0.8, 1.5, 2.5])


def test_quantiles_take_an_observed_value():
    # 80th percentile of 10 values: the 8th smallest (ceil(0.8 * 10) = 8) -> 0.8.
    assert quantile_higher(ENTROPY, 0.8) == pytest.approx(0.8)
    assert quantile_higher(ENTROPY, 0.5) == pytest.approx(0.2)  # 5th smallest
    assert quantile_higher(ENTROPY, 0.0) == 0.0 and quantile_higher(ENTROPY, 1.0) == 2.5
    assert quantile_higher(ENTROPY, 0.81) == pytest.approx(1.5)  # ceil(8.1) = 9th
    with pytest.raises(ValueError, match="empty"):
        quantile_higher(torch.tensor([]), 0.5)


def test_summary_by_hand():
    summary = summarize_entropy(ENTROPY, rho=0.8, percentiles=(50, 80))
    assert summary.tokens == 10 and summary.share_below_001 == pytest.approx(0.4)
    assert summary.mean == pytest.approx(6.015 / 10)
    assert summary.percentiles == pytest.approx({"p50": 0.2, "p80": 0.8})
    assert summary.rho_threshold == pytest.approx(0.8)
    # The tokens at or above the threshold are the top 20% + the threshold token: 3 of 10
    # (0.8, 1.5, 2.5): the trainer's selection takes exactly ceil(0.2 * 10) = 2 of them.
    assert int(top_positions(ENTROPY, 0.8).sum()) == 3


def test_entropy_by_position_buckets():
    positions = torch.arange(10)
    rows = entropy_by_position(ENTROPY, positions, bucket=4)
    assert [r[0] for r in rows] == [0, 4, 8] and [r[2] for r in rows] == [4, 4, 2]
    assert rows[0][1] == pytest.approx(0.015 / 4) and rows[2][1] == pytest.approx(2.0)


def test_overlap_and_change_by_hand():
    after = ENTROPY.clone()
    after[7], after[3] = 0.0, 3.0  # token 7 leaves the top, token 3 enters it
    # top(before) = {7, 8, 9} (>= 0.8); top(after): threshold = 8th smallest of after = 1.5
    # -> {3, 8, 9}; shared {8, 9}: 2 / 3.
    assert top_overlap(ENTROPY, after, rho=0.8) == pytest.approx(2 / 3)
    assert top_overlap(ENTROPY, ENTROPY, rho=0.8) == 1.0
    rows = dict((bucket, (delta, n)) for bucket, delta, n in change_by_bucket(ENTROPY, after))
    assert rows["[0, 0.01)"] == pytest.approx(((3.0 - 0.009) / 4, 4))
    assert rows["[0.5, 1)"] == pytest.approx(((0.0 - 0.8) / 2, 2))
    with pytest.raises(ValueError, match="same responses"):
        top_overlap(ENTROPY, ENTROPY[:5])


def test_frequent_pieces_by_hand():
    from megatron_fork.analysis.forking_tokens import frequent_pieces

    pieces = ["the", "so", "wait", "the", "so", "x", "wait", "the", "so", "wait"]
    # Top 20% by entropy (>= 0.8, the 8th smallest): tokens 7, 8, 9 -> "the", "so", "wait".
    table = frequent_pieces(pieces, ENTROPY, rho=0.8, top=2)
    assert table["high"] == [("so", 1, 1 / 3), ("the", 1, 1 / 3)]  # ties: alphabetical
    # Below: the, so, wait twice each and x once among 7 tokens; the first two ties by name.
    assert table["low"] == [("so", 2, 2 / 7), ("the", 2, 2 / 7)]
    with pytest.raises(ValueError, match="3 pieces for 10"):
        frequent_pieces(pieces[:3], ENTROPY)


def test_report_folder_from_a_token_table(tmp_path):
    from types import SimpleNamespace

    from megatron_fork.analysis.entropy_report import write_entropy_report
    from megatron_fork.analysis.token_table import Detokenizer, TokenTableWriter

    pieces = ["the", "so", "wait", "the", "so", "x", "wait", "the", "so", "wait"]
    sample = SimpleNamespace(request_id="p0#0", prompt_ids=(1,), output_ids=tuple(range(10)))
    words = Detokenizer(lambda token: pieces[token], lambda ids: "".join(pieces[i] for i in ids))
    with TokenTableWriter(tmp_path / "t.parquet", {"model": "m", "temperature": 1.0}) as table:
        table.write([sample], [(torch.zeros(10), ENTROPY)], words)
    out = write_entropy_report(tmp_path / "t.parquet", tmp_path / "report")
    numbers = json.loads((out / "stats.json").read_text())
    assert numbers["summary"]["tokens"] == 10
    assert numbers["summary"]["share_below_001"] == pytest.approx(0.4)
    assert numbers["summary"]["rho_threshold"] == pytest.approx(0.8)
    assert sum(numbers["histogram"]["counts"]) == 10
    assert numbers["forking_pieces"]["high"][0][:2] == ["so", 1]
    report = (out / "report.md").read_text()
    assert "| share of tokens below 0.01 nats | 40.00% | 50.64% |" in report
    assert (out / "entropy.png").stat().st_size > 10_000
