"""One call writes the whole entropy-analysis folder for a base model, optionally an RL model
and a series of checkpoints:

    out/base/, out/rl/    tokens.parquet (own responses), stats.json, report.md, entropy.png,
                          responses.html (+ .json), responses.png
    out/evolution/        the base's responses scored by the RL model and each checkpoint
    out/evolution.json    comparison base -> RL (overlap, buckets, scatter) and overlap vs step
    out/evolution_scatter.png, out/overlap_vs_step.png
    out/sweep.json, out/sweep.png      accuracy per (T_high, T_low)
    out/report.md         every table, with links to the figures

Collective like ``collect`` (one process, or TP ranks under torchrun): collecting and building
engines involve every rank; reading, plotting, sweeping and writing happen on rank 0."""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from megatron_fork.analysis.collect import CollectConfig, collect, collect_given
from megatron_fork.analysis.entropy_report import write_entropy_report
from megatron_fork.analysis.evolution import checkpoint_step, compare_tables, overlap_series
from megatron_fork.analysis.figures import plot_evolution, plot_overlap_series, plot_sweep
from megatron_fork.analysis.model_source import open_model
from megatron_fork.analysis.prompt_source import SYNTHETIC, prompt_examples
from megatron_fork.analysis.render import write_html, write_png
from megatron_fork.analysis.report_markdown import analysis_markdown
from megatron_fork.analysis.temperature_sweep import SweepConfig, run_sweep, threshold_from_table
from megatron_fork.atomic_files import write_text_atomically
from megatron_fork.parallel.rank0 import from_rank0
from megatron_fork.trainer.rl_config import ParallelConfig


@dataclass(frozen=True)
class AnalysisConfig:
    base: str
    """The base model: a Hugging Face folder or a Megatron checkpoint."""
    out: str
    """The report folder."""
    rl: str | None = None
    """The model after RL (compared with the base on the base's responses)."""
    checkpoints: tuple[str, ...] = ()
    """Further checkpoints for the overlap-vs-step curve (their step read from each)."""
    prompt_set: str = SYNTHETIC
    """"synthetic" (the task's held-out split) or a prompt file (JSONL/JSON/parquet)."""
    prompts: int = 64
    """Prompts collected per model (one response each)."""
    max_new_tokens: int = 48
    temperature: float = 1.0
    rho: float = 0.8
    """Forking tokens are those at or above the rho-quantile of entropy (the top 20%)."""
    render_samples: int = 6
    """Responses shown in the HTML page (the PNG shows the first four)."""
    seed: int = 0
    sweep: SweepConfig | None = field(default_factory=SweepConfig)
    """None: no temperature sweep."""
    sweep_model: str = "base"
    """"base" or "rl": the model the sweep decodes (its own table gives the threshold)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self):
        if self.sweep_model not in ("base", "rl") or (self.sweep_model == "rl" and not self.rl):
            raise ValueError("sweep_model must be 'base', or 'rl' when an RL model is given")
        if self.prompts < 1:
            raise ValueError(f"prompts must be >= 1, got {self.prompts}")


def write_analysis(config: AnalysisConfig) -> Path:
    start = time.perf_counter()
    out = Path(config.out)
    models = {"base": config.base, **({"rl": config.rl} if config.rl else {})}
    numbers = {"models": {}}
    for name, source in models.items():
        numbers["models"][name] = _model_report(config, name, source)
    if config.rl or config.checkpoints:
        numbers["evolution"] = _evolution(config)
    if config.sweep is not None:
        numbers["sweep"] = _sweep(config, models[config.sweep_model])
    numbers["settings"] = {
        "prompt_set": config.prompt_set, "prompts": config.prompts, "rho": config.rho,
        "max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
        "wall_seconds": time.perf_counter() - start,
    }  # fmt: skip
    from_rank0(lambda: write_text_atomically(out / "report.md", analysis_markdown(numbers)))
    return out


def _collect_config(config: AnalysisConfig, source: str, table: Path) -> CollectConfig:
    return CollectConfig(
        source, str(table), temperature=config.temperature, max_new_tokens=config.max_new_tokens,
        seed=config.seed, prompt_set=config.prompt_set, parallel=config.parallel,
    )  # fmt: skip


def _model_report(config: AnalysisConfig, name: str, source: str) -> dict:
    """Collect the model's own responses; its statistics, plots and rendered responses."""
    folder = Path(config.out) / name
    from_rank0(lambda: folder.mkdir(parents=True, exist_ok=True))
    prompts = (e.prompt for e in prompt_examples(config.prompt_set, config.prompts))
    table = collect(_collect_config(config, source, folder / "tokens.parquet"), prompts)

    def report():
        write_entropy_report(table, folder, config.rho)
        write_html(table, folder / "responses.html", config.render_samples, config.rho)
        write_png(table, folder / "responses.png", min(4, config.render_samples), config.rho)
        return json.loads((folder / "stats.json").read_text())

    return from_rank0(report)


def _evolution(config: AnalysisConfig) -> dict:
    """Score the base's responses with every later model; compare each with the base."""
    out = Path(config.out)
    base_table = out / "base" / "tokens.parquet"
    folder = out / "evolution"
    from_rank0(lambda: folder.mkdir(parents=True, exist_ok=True))
    later = list(dict.fromkeys([*config.checkpoints, *([config.rl] if config.rl else [])]))
    scored = []
    for index, source in enumerate(later):
        table = folder / f"{index:02d}_{Path(source).name}.parquet"
        collect_given(_collect_config(config, source, table), base_table)
        scored.append((source, checkpoint_step(source), str(table)))

    def compare():
        series = overlap_series(base_table, [("base", 0, str(base_table)), *scored], config.rho)
        last = scored[-1][2]  # the RL model (or the last checkpoint)
        evolution = {"comparison": compare_tables(base_table, last, config.rho), "series": series}
        write_text_atomically(out / "evolution.json", json.dumps(evolution, indent=1) + "\n")
        plot_evolution(evolution["comparison"], out / "evolution_scatter.png")
        if len(series) > 1:
            plot_overlap_series(series, config.rho, out / "overlap_vs_step.png")
        return evolution

    return from_rank0(compare)


def _sweep(config: AnalysisConfig, source: str) -> dict:
    sweep = config.sweep
    table = Path(config.out) / config.sweep_model / "tokens.parquet"
    if sweep.threshold is None:
        threshold = from_rank0(lambda: threshold_from_table(table, sweep.rho))
        where = f"the {sweep.rho:g}-quantile of `{config.sweep_model}`'s entropies"
    else:
        threshold, where = sweep.threshold, "fixed"
    analysis = open_model(source, config.parallel)
    engine = analysis.rollout_engine()

    def run():
        examples = list(prompt_examples(config.prompt_set, sweep.max_prompts, need_answers=True))
        result = run_sweep(engine, analysis.tokenizer, analysis.ids.eos, examples, sweep, threshold)
        result.update(model=source, threshold_source=where)
        out = Path(config.out)
        write_text_atomically(out / "sweep.json", json.dumps(result, indent=1) + "\n")
        plot_sweep(result, out / "sweep.png")
        return result

    return from_rank0(run)
