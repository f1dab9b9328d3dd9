"""An interrupted evaluation resumes: finished prompts are kept and not generated again (engine
calls and request ids counted), a torn last line (a kill mid-write) is not trusted, and the
summary and the samples equal an uninterrupted run's. Results of other settings are refused
(on a parquet prompt file)."""

import json

import pytest

from megatron_fork.eval.runner import evaluate
from megatron_fork.eval.settings import EvalSetupError
from tests.eval.support import (
    Interrupted,
    counting_engine,
    sample_lines,
    tiny_settings,
    write_prompt_file,
)

PROMPTS = 10  # 4 batches of 3 prompts


def _comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("wall_seconds", "resumed_prompts")}


def test_resume_after_an_interruption_redoes_only_unfinished_prompts(base_model, tmp_path):
    prompts = write_prompt_file(tmp_path / "prompts.jsonl", PROMPTS)
    whole = tiny_settings(base_model, prompts, tmp_path / "whole")
    reference = evaluate(whole, counting_engine(whole))

    settings = tiny_settings(base_model, prompts, tmp_path / "cut")
    with pytest.raises(Interrupted):
        evaluate(settings, counting_engine(settings, fail_after=2))  # 6 prompts finished
    samples = tmp_path / "cut" / "samples.jsonl"
    lines = samples.read_text().splitlines(True)
    assert len(lines) == 6 * settings.k and not (tmp_path / "cut" / "summary.json").exists()
    torn = json.dumps({**json.loads(lines[0]), "prompt_index": 6, "sample_index": 0})
    samples.write_text("".join(lines) + torn[: len(torn) // 2])  # killed mid-write

    engine = counting_engine(settings)
    resumed = evaluate(settings, engine)
    assert engine.engine.calls == 2  # prompts 6-8, then 9
    assert {rid[:-5] for rid in engine.engine.request_ids} == {
        f"x00000000-0000-00000{p}" for p in range(6, PROMPTS)
    }
    assert resumed["resumed_prompts"] == 6
    assert _comparable(resumed) == _comparable(reference)
    key = lambda r: (r["prompt_index"], r["sample_index"])  # noqa: E731
    assert sorted(sample_lines(tmp_path / "cut"), key=key) == sample_lines(tmp_path / "whole")

    again = counting_engine(settings)
    assert _comparable(evaluate(settings, again)) == _comparable(reference)
    assert again.engine.calls == 0  # nothing left to generate


def test_results_of_other_settings_are_refused_not_mixed(base_model, tmp_path):
    prompts = write_prompt_file(tmp_path / "prompts.parquet", 2)
    settings = tiny_settings(base_model, prompts, tmp_path / "out", k=2, prompts_per_batch=2)
    first = evaluate(settings)
    with pytest.raises(EvalSetupError, match=r"k 2 then, 3 now.*--restart"):
        evaluate(tiny_settings(base_model, prompts, tmp_path / "out", k=3))
    redone = evaluate(tiny_settings(base_model, prompts, tmp_path / "out", k=3, restart=True))
    assert redone["samples"] == 6 and first["samples"] == 4


def test_a_response_with_unicode_line_separators_resumes_as_finished(tmp_path):
    """json.dumps leaves U+2028 / U+2029 / U+0085 unescaped: records end at "\\n" only, else
    such a prompt would be dropped and generated again on every resume."""
    from megatron_fork.eval.results import ResultStore

    store = ResultStore(tmp_path, {"k": 2})
    records = [
        {
            "prompt_index": 0,
            "prompt_id": "p0",
            "sample_index": i,
            "response": f"x\u2028y\u2029{i}\x85",
            "correct": i == 0,
        }
        for i in range(2)
    ]
    store.append(records)
    again = ResultStore(tmp_path, {"k": 2})
    assert again.finished(["p0"], 2) == {0: records}
