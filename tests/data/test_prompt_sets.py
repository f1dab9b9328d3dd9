"""A run's prompt sets: the synthetic task's disjoint splits, or files whose bad rows are
skipped and counted (the RL loop logs the counts at step 0), and a file with no usable row is
refused by name."""

from pathlib import Path

import pytest

from megatron_fork.data.prompt_sets import DataConfig, load_prompt_sets
from megatron_fork.rl.controller import data_metrics

FIXTURES = Path(__file__).parent / "fixtures"


def test_synthetic_sets_are_disjoint_and_report_nothing():
    sets = load_prompt_sets(DataConfig(synthetic_terms=2, synthetic_heldout=20))
    assert len(sets.eval) == 20 and len(sets.train) == 80
    assert not {e.prompt for e in sets.eval} & {e.prompt for e in sets.train}
    assert sets.reports == ()


def test_files_with_bad_rows_load_the_good_ones_and_count_the_rest():
    sets = load_prompt_sets(
        DataConfig(
            train=str(FIXTURES / "dapo_mixed.jsonl"), eval=str(FIXTURES / "aime_mixed.jsonl")
        )
    )
    assert len(sets.train) == 4
    metrics = data_metrics(sets.reports)
    assert metrics["data/0/rows_read"] == 18 and metrics["data/0/rows_skipped"] == 14
    assert metrics["data/1/rows_kept"] == len(sets.eval) > 0


def test_a_file_without_usable_rows_is_refused_by_name(tmp_path):
    bad = tmp_path / "empty.jsonl"
    bad.write_text('{"prompt": ""}\nnot json\n')
    with pytest.raises(ValueError, match="empty.jsonl: no usable rows"):
        load_prompt_sets(DataConfig(train=str(bad)))
