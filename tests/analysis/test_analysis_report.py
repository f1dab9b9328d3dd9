"""One call writes the whole report folder (tiny Qwen3, a few prompts from a file with one bad
row): per-model statistics and rendered responses; the evolution on the base's responses against
a different model (the base with perturbed weights, standing in for an RL checkpoint at step 7;
also listed among the checkpoints, before another), its overlap and buckets equal to an
independent computation from the two token tables; the temperature sweep; report.md with every
table and the prompt file's skipped rows; the JSON behind every figure. Bad settings are refused
before anything is collected."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from tests.support.distributed import run_distributed

STEP = 7  # the stand-in RL checkpoint's training step


def _worker(rank, world, base_model, rl_model, prompt_file, out):
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
        rl=rl_model,
        checkpoints=(rl_model, base_model),  # the RL model listed first: still the comparison
        prompt_set=prompt_file,
        prompts=3,
        max_new_tokens=12,
        render_samples=2,
        sweep=sweep,
    )
    write_analysis(config)


@pytest.fixture(scope="module")
def rl_model(base_model, tmp_path_factory):
    """The base model with every weight moved by 10% of its tensor's spread (fixed seed), and
    a trainer_state.json saying step 7: a different model of the same vocabulary."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("perturbed") / "rl"
    model = AutoModelForCausalLM.from_pretrained(base_model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.add_(0.1 * param.std().nan_to_num(0.0) * noise)
    model.save_pretrained(out)
    shutil.copy(base_model / "tokenizer.json", out / "tokenizer.json")
    (out / "trainer_state.json").write_text(json.dumps({"step": STEP}))
    return out


def _prompt_file(path, bad_row: dict):
    """Three held-out prompts with their answers; ``bad_row`` second (read before the limit)."""
    from megatron_fork.analysis.prompt_source import prompt_examples

    rows = [{"prompt": e.prompt, "answer": e.answer} for e in prompt_examples("synthetic", 3)]
    rows.insert(1, bad_row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _independent(before: list[float], after: list[float]):
    """By hand from the two tables: the top 20% is ceil(n / 5) tokens, largest entropy first,
    ties to the earlier token; the overlap and the mean change per bucket of the base."""
    n = len(before)
    k = -(-n // 5)
    top = [set(sorted(range(n), key=lambda i: (-e[i], i))[:k]) for e in (before, after)]
    bounds = [0.0, 0.01, 0.1, 0.5, 1.0, 2.0, math.inf]
    buckets = []
    for low, high in zip(bounds[:-1], bounds[1:], strict=True):
        chosen = [i for i in range(n) if low <= before[i] < high]
        if chosen:
            delta = sum(after[i] - before[i] for i in chosen) / len(chosen)
            buckets.append(
                {"bucket": f"[{low:g}, {high:g})", "mean_change": delta, "tokens": len(chosen)}
            )
    return len(top[0] & top[1]) / k, min(before[i] for i in top[0]), buckets


def test_one_call_writes_the_report_folder(base_model, rl_model, tmp_path):
    from megatron_fork.analysis.token_table import read_metadata, read_token_table

    out = tmp_path / "report"
    prompts = _prompt_file(tmp_path / "prompts.jsonl", {"text": "1 2:", "answer": "3"})
    run_distributed(_worker, 1, str(base_model), str(rl_model), str(prompts), str(out))
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
    assert read_metadata(out / "base" / "tokens.parquet")["weight_version"] is None
    assert read_metadata(out / "rl" / "tokens.parquet")["weight_version"] == STEP

    evolution = json.loads((out / "evolution.json").read_text())
    comparison = evolution["comparison"]
    assert comparison["after"] == str(rl_model)  # not the last listed checkpoint
    base, _ = read_token_table(out / "base" / "tokens.parquet")
    scored, _ = read_token_table(out / "evolution" / "00_rl.parquet")
    before, after = base.column("entropy").to_pylist(), scored.column("entropy").to_pylist()
    assert before != after  # two different models
    overlap, threshold, buckets = _independent(before, after)
    assert comparison["overlap"] == pytest.approx(overlap)
    assert comparison["threshold_before"] == pytest.approx(threshold)
    assert len(comparison["by_bucket"]) == len(buckets)
    for got, expected in zip(comparison["by_bucket"], buckets, strict=True):
        assert got == {**expected, "mean_change": pytest.approx(expected["mean_change"])}
    series = evolution["series"]
    assert [(r["label"], r["step"]) for r in series] == [
        ("base", 0),
        (str(rl_model), STEP),
        (str(base_model), None),
    ]
    assert [r["overlap"] for r in series] == pytest.approx([1.0, overlap, 1.0])

    sweep = json.loads((out / "sweep.json").read_text())
    stats = json.loads((out / "base" / "stats.json").read_text())
    assert stats["summary"]["top_tokens"] == -(-len(before) // 5)
    assert sweep["threshold"] == pytest.approx(stats["summary"]["top_threshold"])
    assert [(c["t_high"], c["t_low"]) for c in sweep["cells"]] == [(1.0, 0.5), (1.0, 1.0)]
    for png in ("evolution_scatter.png", "overlap_vs_step.png", "sweep.png"):
        assert (out / png).stat().st_size > 5_000, png
    report = (out / "report.md").read_text()
    assert f"| top-20% position overlap | {overlap:.1%} |" in report
    assert "| T_high \\ T_low | 0.5 | 1 |" in report and "(evolution_scatter.png)" in report
    skipped = f"{prompts}: kept 3 of 4 rows; skipped 1 (missing_prompt 1)"
    assert f"Prompt file: {skipped}." in report and f"Eval file: {skipped}." in report
    assert not list(out.rglob("*.tmp"))


def _refused(config, match):
    """``write_analysis`` raises before collecting anything: no report folder is made."""
    from megatron_fork.analysis.analysis_report import write_analysis

    with pytest.raises(ValueError, match=match):
        write_analysis(config)
    assert not Path(config.out).exists()


def test_bad_settings_fail_before_collecting(base_model, tmp_path):
    from megatron_fork.analysis.analysis_report import AnalysisConfig

    out = str(tmp_path / "report")
    checkpoint = tmp_path / "step_00000010"  # a Megatron checkpoint without hf/
    checkpoint.mkdir()
    (checkpoint / ".metadata").write_bytes(b"")
    wide = tmp_path / "wide"  # the base's tokenizer, a config of 60 embedding rows
    wide.mkdir()
    shutil.copy(base_model / "tokenizer.json", wide)
    config = json.loads((base_model / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**config, "vocab_size": 60}))
    unanswered = tmp_path / "unanswered.jsonl"
    unanswered.write_text('{"prompt": "1 2:"}\n{"prompt": "3 4:"}\n')
    wrong_key = tmp_path / "wrong_key.jsonl"
    wrong_key.write_text('{"text": "1 2:"}\n{"text": "3 4:"}\n')

    _refused(
        AnalysisConfig(base=str(base_model), out=out, checkpoints=(str(checkpoint),)),
        r"--checkpoints .*step_00000010: cannot be analysed: .*a Megatron checkpoint without hf/",
    )
    _refused(
        AnalysisConfig(base=str(base_model), out=out, rl=str(wide)),
        r"model and .*wide have different vocabularies \(vocabulary size: 23 vs 60\)",
    )
    _refused(
        AnalysisConfig(base=str(base_model), out=out, temperature=0.7),
        r"threshold would come from the base token table, collected at temperature 0.7",
    )
    _refused(
        AnalysisConfig(base=str(base_model), out=out, prompt_set=str(unanswered)),
        r"the sweep's eval set has no prompt with a gold answer \(.*unanswered.jsonl: kept 0 of "
        r"2 rows; skipped 2 \(missing_answer 2\)\)",
    )
    _refused(  # the reasons the rows were skipped, in the error
        AnalysisConfig(base=str(base_model), out=out, prompt_set=str(wrong_key)),
        r"the prompt set is empty: .*wrong_key.jsonl: kept 0 of 2 rows; skipped 2 "
        r"\(missing_prompt 2\)",
    )
    assert AnalysisConfig(base=str(base_model), out=out).rho == 0.2  # the top 20%
    with pytest.raises(ValueError, match="rho=0.8: rho is the share of tokens kept"):
        AnalysisConfig(base=str(base_model), out=out, rho=0.8)


def test_each_later_model_is_scored_once_in_the_order_given():
    from megatron_fork.analysis.analysis_report import AnalysisConfig, later_models

    def later(rl, *checkpoints):
        return later_models(AnalysisConfig(base="b", out="o", rl=rl, checkpoints=checkpoints))

    assert later("rl", "c1", "c2") == ["c1", "c2", "rl"]
    assert later("rl", "rl", "c2") == ["rl", "c2"]  # the RL model where it was listed
    assert later("rl", "c1", "c1/", "rl/") == ["c1", "rl/"]  # one folder, as first written
    assert later(None, "c1", "c2") == ["c1", "c2"]
