"""One call writes the whole report folder (tiny Qwen3, a few prompts): per-model statistics and
rendered responses, the evolution on the base's responses (the same model as "RL": every top
position kept, no change in any bucket), the temperature sweep, report.md with every table,
and the JSON behind every figure."""

import json

import pytest

from tests.support.distributed import run_distributed


def _worker(rank, world, base_model, out):
    from megatron_fork.analysis.analysis_report import AnalysisConfig, write_analysis
    from megatron_fork.analysis.temperature_sweep import SweepConfig
    from tests.support.megatron_setup import init_megatron

    init_megatron(seed=0)
    sweep = SweepConfig(
        high_temperatures=(1.0,),
        low_temperatures=(0.5, 1.0),
        samples_per_prompt=1,
        max_prompts=3,
        max_new_tokens=12,
    )
    config = AnalysisConfig(
        base=base_model,
        out=out,
        rl=base_model,
        checkpoints=(base_model,),
        prompts=3,
        max_new_tokens=12,
        render_samples=2,
        sweep=sweep,
    )
    write_analysis(config)


def test_one_call_writes_the_report_folder(base_model, tmp_path):
    out = tmp_path / "report"
    run_distributed(_worker, 1, str(base_model), str(out))
    for name in ("base", "rl"):
        for file in (
            "tokens.parquet",
            "stats.json",
            "entropy.png",
            "responses.html",
            "responses.json",
            "responses.png",
        ):
            assert (out / name / file).is_file(), f"{name}/{file}"
    evolution = json.loads((out / "evolution.json").read_text())
    comparison = evolution["comparison"]
    assert comparison["overlap"] == 1.0  # the same weights score the same tokens alike
    assert all(b["mean_change"] == 0.0 for b in comparison["by_bucket"])
    assert [r["overlap"] for r in evolution["series"]] == [1.0, 1.0]  # base; the model once
    sweep = json.loads((out / "sweep.json").read_text())
    stats = json.loads((out / "base" / "stats.json").read_text())
    assert sweep["threshold"] == pytest.approx(stats["summary"]["rho_threshold"])
    assert [(c["t_high"], c["t_low"]) for c in sweep["cells"]] == [(1.0, 0.5), (1.0, 1.0)]
    for png in ("evolution_scatter.png", "overlap_vs_step.png", "sweep.png"):
        assert (out / png).stat().st_size > 5_000, png
    report = (out / "report.md").read_text()
    assert "| top-20% position overlap | 100.0% |" in report
    assert "| T_high \\ T_low | 0.5 | 1 |" in report and "(evolution_scatter.png)" in report
    assert not list(out.rglob("*.tmp"))
