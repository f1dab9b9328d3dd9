"""Given prompt/response files: a repeated ``id`` is refused, naming the id and both rows (a
sample's rows are found by its id, so two samples of one id would merge in the token table)."""

import json

import pytest

from megatron_fork.analysis.given_responses import samples_from_file
from megatron_fork.data.report import LoadReport
from megatron_fork.data.tokenizer import build_and_save, load_tokenizer


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_repeated_ids_are_refused(tmp_path):
    tokenizer = load_tokenizer(build_and_save(tmp_path))
    pair = {"prompt": "1 2:", "response": "3"}
    kept = _write(tmp_path / "ok.jsonl", [{"id": "a", **pair}, pair, {"id": "b", **pair}])
    report = LoadReport(str(kept))
    samples = [s for chunk in samples_from_file(kept, tokenizer, report) for s in chunk]
    assert [s.request_id for s in samples] == ["a", "r2", "b"]  # r<line> without an id
    twice = _write(
        tmp_path / "twice.jsonl", [{"id": "a", **pair}, {"id": "b", **pair}, {"id": "a", **pair}]
    )
    with pytest.raises(
        ValueError, match="id 'a' of twice.jsonl:3 was already taken by twice.jsonl:1"
    ):
        list(samples_from_file(twice, tokenizer, LoadReport(str(twice))))
    # A given id equal to the name of a row without one is a repeat as well.
    named = _write(tmp_path / "named.jsonl", [pair, {"id": "r1", **pair}])
    with pytest.raises(
        ValueError, match="id 'r1' of named.jsonl:2 was already taken by named.jsonl:1"
    ):
        list(samples_from_file(named, tokenizer, LoadReport(str(named))))
