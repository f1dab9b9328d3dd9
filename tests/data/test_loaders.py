"""DAPO-style and AIME-style loaders on fixture files with deliberately bad rows."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megatron_fork.data.loaders import load_aime, load_dapo, load_examples
from megatron_fork.data.report import DataFileError
from megatron_fork.data.types import ChatMessage
from megatron_fork.rewards.boxed import extract_last_boxed as last_boxed

FIXTURES = Path(__file__).parent / "fixtures"


def test_dapo_jsonl_counts_every_bad_row():
    examples, report = load_dapo(FIXTURES / "dapo_mixed.jsonl")
    assert dict(report.skipped) == {
        "invalid_json": 1,
        "not_utf8": 1,
        "not_an_object": 1,
        "missing_prompt": 2,
        "missing_answer": 2,
        "wrong_type": 3,
        "empty_prompt": 2,
        "empty_answer": 1,
        "duplicate_id": 1,
    }
    assert (report.rows_read, report.rows_kept, report.blank_lines) == (18, 4, 1)
    assert report.rows_read == report.rows_kept + report.rows_skipped
    assert report.examples["not_utf8"][0].startswith("dapo_mixed.jsonl:6: ")
    assert "kept 4 of 18 rows; skipped 14" in report.summary()
    assert [(e.id, e.answer, e.source) for e in examples] == [
        ("a1", "34", "math_dapo"),
        ("dapo_mixed:2", "12", "math_dapo"),
        ("a3", "5", "aime_dapo"),
        ("7", "2", "math_dapo"),
    ]


def test_dapo_prompt_text_and_messages():
    examples, _ = load_dapo(FIXTURES / "dapo_mixed.jsonl")
    first, plain, with_system = examples[:3]
    assert first.prompt == "What is 17 + 17?"
    assert first.messages == (ChatMessage("user", "What is 17 + 17?"),)
    assert (plain.prompt, plain.messages) == ("Compute 3 * 4.", ())
    assert with_system.prompt == "Find x if 2x = 10."  # user turns only...
    assert with_system.messages[0] == ChatMessage("system", "Think step by step.")  # ...all kept


def test_aime_jsonl_key_variants_and_bad_rows():
    examples, report = load_aime(FIXTURES / "aime_mixed.jsonl")
    assert dict(report.skipped) == {
        "no_final_answer": 1,
        "missing_answer": 1,
        "missing_prompt": 1,
        "wrong_type": 1,
        "empty_prompt": 1,
        "invalid_json": 1,
        "duplicate_id": 1,
        "empty_answer": 1,
        "not_an_object": 1,
    }
    assert (report.rows_read, report.rows_kept) == (14, 5)
    assert [(e.id, e.answer, e.source) for e in examples] == [
        ("2024-I-1", "24", "aime_mixed"),
        ("2024-I-2", "25", "aime_mixed"),  # capitalised keys, integer answer
        ("aime_mixed:3", "33", "aime25"),  # "question" key, "source" key
        ("4", "\\frac{1}{2}", "aime_mixed"),  # answer from the solution's \boxed{}
        ("aime_mixed:12", "73", "aime24"),  # a DAPO-format eval row
    ]
    assert examples[2].prompt == "What is 3 + 30?"


def _write_both(tmp_path, rows, stem="rows"):
    """The same rows as JSONL and as parquet (same stem, so fallback ids agree)."""
    jsonl = tmp_path / f"{stem}.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = tmp_path / "pq" / f"{stem}.parquet"
    parquet.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    return jsonl, parquet


def _dapo_row(i, content="Q{i}?", answer="{i}", index=True):
    return {
        "data_source": "math_dapo",
        "prompt": None if content is None else [{"role": "user", "content": content.format(i=i)}],
        "reward_model": {"ground_truth": answer.format(i=i), "style": "rule"},
        "extra_info": {"index": f"id{i}"} if index else None,
    }


def test_parquet_and_jsonl_give_the_same_rows(tmp_path):
    rows = [_dapo_row(i, index=i % 2 == 0) for i in range(6)]
    rows += [_dapo_row(6, content=None), _dapo_row(7, content="  "), _dapo_row(8, answer="")]
    jsonl, parquet = _write_both(tmp_path, rows)
    from_jsonl, jsonl_report = load_dapo(jsonl)
    from_parquet, parquet_report = load_dapo(parquet)
    assert from_parquet == from_jsonl
    assert len(from_parquet) == 6 and from_parquet[1].id == "rows:2"
    expected = {"missing_prompt": 1, "empty_prompt": 1, "empty_answer": 1}
    assert dict(parquet_report.skipped) == dict(jsonl_report.skipped) == expected


def test_aime_parquet_with_integer_answers(tmp_path):
    rows = [{"ID": f"p{i}", "Problem": f"Problem {i}", "Answer": i * 10} for i in range(3)]
    jsonl, parquet = _write_both(tmp_path, rows, stem="aime")
    assert load_aime(parquet)[0] == load_aime(jsonl)[0]
    assert [e.answer for e in load_aime(parquet)[0]] == ["0", "10", "20"]


def test_file_level_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_dapo(missing)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataFileError, match="broken.parquet"):
        load_dapo(broken)
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DataFileError, match="data.csv"):
        load_dapo(csv)
    with pytest.raises(ValueError, match="layout"):
        load_examples(FIXTURES / "aime_mixed.jsonl", "csv")


def test_json_array_and_json_lines_named_json(tmp_path):
    rows = [{"problem": "P1", "answer": "1"}, {"problem": "P2", "answer": "2"}]
    array = tmp_path / "array.json"
    array.write_text(json.dumps(rows))
    lines = tmp_path / "lines.json"
    lines.write_text("\n".join(json.dumps(r) for r in rows))
    assert [e.answer for e in load_aime(array)[0]] == ["1", "2"]
    assert [e.answer for e in load_aime(lines)[0]] == ["1", "2"]
    assert load_aime(array)[0][0].id == "array:1"


def test_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"problem": "P", "answer": "1"}\r\n\r\n')
    examples, report = load_aime(path)
    assert [e.prompt for e in examples] == ["P"]
    assert (report.rows_read, report.blank_lines, report.rows_skipped) == (1, 1, 0)


def test_last_boxed():
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{2}{3}}.") == "\\frac{2}{3}"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{unclosed") is None


def test_broken_json_array_is_a_file_error_naming_the_position(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"problem": "1+1", "answer": "2"},\n  {"problem": "2+2",}\n]\n')
    with pytest.raises(DataFileError, match=r"rows\.json.*line 3"):
        load_aime(path)
