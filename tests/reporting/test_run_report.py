"""A run's report from a hand-written metrics log: accuracy before/after from the step-0 and
last evaluations, entropy and selection averages, a PNG plot, and no report without a base
evaluation."""

import json

import pytest

from megatron_fork.reporting.run_report import summarize, write_run_report

RECORDS = [
    {"step": 0, "eval/avg_at_k": 0.25, "eval/pass_at_k": 0.5},
    *(
        {
            "step": s,
            "rollout/accuracy": 0.1 * s,
            "rollout/reward_mean": 0.0,
            "train/entropy_mean": 1.0 / s,
            "train/selected_fraction": 0.2,
        }
        for s in range(1, 11)
    ),
]
RECORDS[10]["eval/avg_at_k"] = 0.5


def test_summary_from_hand_worked_records():
    summary = summarize(RECORDS)
    assert summary["base_accuracy"] == 0.25 and summary["final_accuracy"] == 0.5
    assert summary["accuracy_gain"] == pytest.approx(0.25)
    assert summary["rl_steps"] == 10 and summary["final_eval_step"] == 10
    assert summary["entropy_mean_first_steps"] == 1.0  # first tenth: step 1
    assert summary["entropy_mean_last_steps"] == pytest.approx(0.1)  # last tenth: step 10
    assert summary["selected_fraction_mean"] == pytest.approx(0.2)


def test_report_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    summary = write_run_report(run, tmp_path / "report", {"wall_seconds": 12.0})
    saved = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert saved == summary and saved["wall_seconds"] == 12.0
    assert (tmp_path / "report" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["curves.png", "summary.json"]


def test_no_base_evaluation_is_an_error():
    with pytest.raises(ValueError, match="no step-0 evaluation"):
        summarize(RECORDS[1:])
