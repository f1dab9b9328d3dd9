"""The ablation tool's tasks name real recipe functions, and the templated task's recipe is the
demo's RL recipe on the templated data (the arms then differ only in the loss settings)."""

import inspect

from recipes import tiny_qwen3_cpu
from tools.ablation import TASKS


def test_every_task_names_a_base_model_builder_and_an_rl_recipe(tmp_path):
    for task, (build, recipe) in TASKS.items():
        assert callable(getattr(tiny_qwen3_cpu, build)), task
        assert list(inspect.signature(getattr(tiny_qwen3_cpu, recipe)).parameters)[:3] == [
            "base_model",
            "output_dir",
            "seed",
        ], task
    fold = tiny_qwen3_cpu.rl(tmp_path / "base", tmp_path / "run", 3)
    templated = tiny_qwen3_cpu.rl_templated(tmp_path / "base", tmp_path / "run", 3)
    assert fold.data.task == "fold" and templated.data.task == "templated"
    assert templated.loss == fold.loss and templated.seed == fold.seed == 3


def test_report_only_tables_the_finished_runs_and_skips_missing_ones(tmp_path, capsys):
    """``--report-only`` reads the finished runs' summaries (the same settings only), leaves
    out an arm that has none and writes the table and plot without running anything."""
    import json
    import sys

    from tools import ablation

    overrides = [*ablation.DEFAULT_OVERRIDES, *ablation.ARMS["strategy"]["top 20%"]]
    for seed, final in ((0, 0.5), (1, 0.7)):
        run = tmp_path / "top_20pct" / f"seed{seed}"
        run.mkdir(parents=True)
        summary = {"overrides": overrides, "task": "fold", "base_accuracy": 0.4,
                   "final_accuracy": final}  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))
    other = tmp_path / "all_tokens" / "seed0"
    other.mkdir(parents=True)  # other settings: not this ablation's run
    (other / "summary.json").write_text(json.dumps({**summary, "overrides": ["steps=3"]}))
    (tmp_path / "base_model").mkdir()
    (tmp_path / "base_model" / "model.safetensors").write_bytes(b"")  # reused, not trained
    argv = ["ablation.py", "--output", str(tmp_path), "--seeds", "0", "1", "2", "--report-only"]
    old, sys.argv = sys.argv, argv
    try:
        ablation.main()
    finally:
        sys.argv = old
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert list(report["arms"]) == ["top 20%"]
    row = report["arms"]["top 20%"]
    assert row["seeds"] == 2 and abs(row["final_mean"] - 0.6) < 1e-12
    assert abs(row["final_std"] - 0.1414213562) < 1e-9  # stdev(0.5, 0.7)
    assert (tmp_path / "ablation.png").is_file()
