"""Quantiles, summaries, position buckets, the top-rho set (the trainer's count and tie rule)
and top-position overlap on hand-worked examples; rho is the share kept (0.2 = the top 20%)."""

import json

import pytest
import torch

from megatron_fork.analysis.entropy_statistics import (
    entropy_by_position,
    quantile_higher,
    quantile_index,
    summarize_entropy,
)
from megatron_fork.analysis.overlap import (
    change_by_bucket,
    check_top_share,
    top_overlap,
    top_positions,
    top_threshold,
)

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


def test_quantile_index_is_exact_for_large_counts():
    # 0.8 * 25,000,001 = 20,000,000.8: the 20,000,001st smallest, index 20,000,000. In float32
    # (spacing 2 above 2**24) the product rounds to 20,000,000 and the index came out one less.
    assert quantile_index(0.8, 25_000_001) == 20_000_000
    assert quantile_index(0.8, 25_000_000) == 19_999_999  # exactly 20,000,000: the 20Mth
    assert quantile_index(0.1, 30) == 2  # 0.1 * 30 = 3.0000000000000004 in floats: still 3rd
    assert quantile_index(0.0, 10) == 0 and quantile_index(1.0, 10) == 9


def test_summary_by_hand():
    summary = summarize_entropy(ENTROPY, rho=0.2, percentiles=(50, 80))
    assert summary.tokens == 10 and summary.share_below_001 == pytest.approx(0.4)
    assert summary.mean == pytest.approx(6.015 / 10)
    assert summary.percentiles == pytest.approx({"p50": 0.2, "p80": 0.8})
    # The top 20% of 10 tokens is exactly ceil(0.2 * 10) = 2 tokens (the trainer's count):
    # 1.5 and 2.5, so the threshold is 1.5, not the 80th percentile 0.8 (which would take 3).
    assert summary.top_tokens == 2 and summary.top_threshold == pytest.approx(1.5)
    assert top_positions(ENTROPY, 0.2).tolist() == [False] * 8 + [True, True]
    assert top_threshold(ENTROPY, 0.2) == pytest.approx(1.5)


def test_top_set_takes_the_trainers_count_and_breaks_ties_by_position():
    from megatron_fork.forking.selection import select_forking_tokens

    # Ties at the cutoff: 0.9 at positions 1, 3 and 6; k = ceil(0.2 * 10) = 2 -> {1, 3}.
    tied = torch.tensor([0.5, 0.9, 0.5, 0.9, 0.5, 0.1, 0.9, 0.2, 0.3, 0.4])
    assert top_positions(tied, 0.2).nonzero().flatten().tolist() == [1, 3]
    assert top_threshold(tied, 0.2) == pytest.approx(0.9)
    # rho = 0.25: k = ceil(2.5) = 3 -> {1, 3, 6}; rho = 0.5: k = 5 -> the three 0.9s, then the
    # first two of the three 0.5s (positions 0 and 2; 4 is left out).
    assert top_positions(tied, 0.25).nonzero().flatten().tolist() == [1, 3, 6]
    assert top_positions(tied, 0.5).nonzero().flatten().tolist() == [0, 1, 2, 3, 6]
    # The trainer's own selection (one process, default order) picks the same tokens.
    everything = torch.ones(10, dtype=torch.bool)
    for rho in (0.2, 0.25, 0.5):
        assert torch.equal(
            select_forking_tokens(tied, everything, rho), top_positions(tied, rho)
        ), rho
        assert torch.equal(
            select_forking_tokens(ENTROPY, everything, rho), top_positions(ENTROPY, rho)
        ), rho
    with pytest.raises(ValueError, match="not finite"):
        top_positions(torch.tensor([0.1, float("nan")]), 0.2)


def test_rho_is_the_share_kept():
    check_top_share(0.2)
    check_top_share(0.5)
    with pytest.raises(ValueError, match=r"rho=0.8: rho is the share .* did you mean 0.2\?"):
        check_top_share(0.8)
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\]"):
        check_top_share(0.0)


def test_entropy_by_position_buckets():
    positions = torch.arange(10)
    rows = entropy_by_position(ENTROPY, positions, bucket=4)
    assert [r[0] for r in rows] == [0, 4, 8] and [r[2] for r in rows] == [4, 4, 2]
    assert rows[0][1] == pytest.approx(0.015 / 4) and rows[2][1] == pytest.approx(2.0)


def test_overlap_and_change_by_hand():
    after = ENTROPY.clone()
    after[7], after[3] = 0.0, 3.0  # token 3 enters the top, pushing out token 8
    # k = 2. top(before) = {8, 9} (1.5, 2.5); after = [0, .001, .005, 3.0, .2, .4, .6, 0, 1.5,
    # 2.5]: top(after) = {3, 9} (3.0, 2.5); shared {9}: 1 / 2.
    assert top_overlap(ENTROPY, after, rho=0.2) == pytest.approx(1 / 2)
    assert top_overlap(ENTROPY, ENTROPY, rho=0.2) == 1.0
    rows = dict((bucket, (delta, n)) for bucket, delta, n in change_by_bucket(ENTROPY, after))
    assert rows["[0, 0.01)"] == pytest.approx(((3.0 - 0.009) / 4, 4))
    assert rows["[0.5, 1)"] == pytest.approx(((0.0 - 0.8) / 2, 2))
    with pytest.raises(ValueError, match="same responses"):
        top_overlap(ENTROPY, ENTROPY[:5])


def test_frequent_pieces_by_hand():
    from megatron_fork.analysis.forking_tokens import frequent_pieces

    pieces = ["the", "so", "wait", "the", "so", "x", "wait", "the", "so", "wait"]
    # Top 20% by entropy: exactly 2 tokens, 8 and 9 -> "so", "wait".
    table = frequent_pieces(pieces, ENTROPY, rho=0.2, top=2)
    assert table["high"] == [("so", 1, 1 / 2), ("wait", 1, 1 / 2)]  # ties: alphabetical
    # The other 8 (tokens 0-7): the 3, so 2, wait 2, x 1; so before wait by name.
    assert table["low"] == [("the", 3, 3 / 8), ("so", 2, 2 / 8)]
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
    assert numbers["summary"]["rho"] == 0.2 and numbers["summary"]["top_tokens"] == 2
    assert numbers["summary"]["top_threshold"] == pytest.approx(1.5)
    assert sum(numbers["histogram"]["counts"]) == 10
    assert numbers["forking_pieces"]["high"][0][:2] == ["so", 1]
    report = (out / "report.md").read_text()
    assert "| share of tokens below 0.01 nats | 40.00% | 50.64% |" in report
    assert "| 80th percentile of entropy | 0.800 | 0.672 |" in report
    assert "| smallest entropy of the top 20% (2 tokens) | 1.500 | |" in report
    assert (out / "entropy.png").stat().st_size > 10_000


def test_histogram_counts_the_largest_token():
    from megatron_fork.analysis.entropy_report import _histogram

    # 10 ** log10(4.25) comes out as 4.249999999999999: a last edge computed that way leaves
    # the largest token out of every bin. Below 1e-4 counts in the first bin.
    entropy = torch.tensor([0.0, 0.5, 4.25], dtype=torch.float64)
    hist = _histogram(entropy)
    assert sum(hist["counts"]) == 3 and hist["counts"][0] == 1 and hist["counts"][-1] == 1
    assert hist["edges"][0] == 1e-4 and hist["edges"][-1] == 4.25
