"""Prompt files for the analysis tools: parsed by the project's loaders' row parser, rows
without gold answers kept for collecting and skipped for the sweep, bad rows counted, and the
file read lazily (taking the first N prompts reads N rows, however long the file)."""

import json

import pytest

from megatron_fork.analysis.prompt_source import NO_ANSWER, iter_prompt_file, prompt_examples
from megatron_fork.data.report import LoadReport


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_rows_with_and_without_answers(tmp_path):
    path = _write(
        tmp_path / "p.jsonl",
        [
            {"prompt": "1 2:", "answer": 3},
            {"prompt": [{"role": "user", "content": "4 5:"}]},  # a chat prompt, no answer
            {"question": "6 7:", "solution": "no box"},  # a solution without \boxed{}
            "not json",
            {"answer": "9"},  # no prompt
        ],
    )
    report = LoadReport(str(path))
    kept = list(iter_prompt_file(path, report))
    assert [(e.prompt, e.answer) for e in kept] == [
        ("1 2:", "3"),
        ("4 5:", NO_ANSWER),
        ("6 7:", NO_ANSWER),
    ]
    assert report.rows_kept == 3 and dict(report.skipped) == {
        "invalid_json": 1,
        "missing_prompt": 1,
    }
    answered = LoadReport(str(path))
    assert [e.prompt for e in iter_prompt_file(path, answered, need_answers=True)] == ["1 2:"]
    assert answered.skipped["missing_answer"] == 1 and answered.skipped["no_final_answer"] == 1


def test_a_long_file_is_read_only_as_far_as_needed(tmp_path):
    path = _write(tmp_path / "big.jsonl", [{"prompt": f"{i}:"} for i in range(5000)])
    report = LoadReport(str(path))
    first = list(prompt_examples(str(path), limit=3, report=report))
    assert [e.prompt for e in first] == ["0:", "1:", "2:"]
    assert report.rows_read == 3  # the other 4997 rows were never parsed


def test_synthetic_set_and_missing_file():
    held_out = list(prompt_examples("synthetic", limit=5))
    assert len(held_out) == 5 and all(e.prompt.endswith(":") and e.answer for e in held_out)
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        list(prompt_examples("nowhere.jsonl", limit=1))
