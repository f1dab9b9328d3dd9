"""One call writes the whole entropy-analysis folder for a base model, optionally an RL model
and a series of checkpoints:

    out/base/, out/rl/    tokens.parquet (own responses), stats.json, report.md, entropy.png,
                          responses.html (+ .json), responses.png
    out/evolution/        the base's responses scored by the RL model and each checkpoint
    out/evolution.json    comparison base -> RL (overlap, buckets, scatter) and overlap vs step
    out/evolution_scatter.png, out/overlap_vs_step.png
    out/sweep.json, out/sweep.png      accuracy per (T_high, T_low)
    out/report.md         every table, with links to the figures

Settings that would fail late are refused first, before any weights load (``check_settings``):
every model source must open (config and tokenizer that fit together; a Megatron checkpoint
needs its ``hf/``) and all must share the base's vocabulary, the prompt set must hold a prompt,
and the sweep needs an eval prompt with a gold answer and, for a threshold taken from a token
table, entropies at temperature 1. Rows of a prompt file that were skipped are counted in
``report.md`` (or in the error when none is left).

Collective like ``collect`` (one process, or TP ranks under torchrun): collecting and building
engines involve every rank; checking, reading, plotting, sweeping and writing happen on rank 0
(through ``from_rank0``: their errors are raised on every rank)."""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from megatron_fork.analysis.collect import CollectConfig, collect, collect_given
from megatron_fork.analysis.entropy_report import write_entropy_report
from megatron_fork.analysis.evolution import compare_tables, overlap_series
from megatron_fork.analysis.figures import plot_evolution, plot_overlap_series, plot_sweep
from megatron_fork.analysis.model_source import (
    check_same_vocabulary,
    checkpoint_step,
    open_model,
    read_vocabulary,
)
from megatron_fork.analysis.overlap import check_top_share
from megatron_fork.analysis.prompt_source import SYNTHETIC, prompt_examples
from megatron_fork.analysis.render import write_html, write_png
from megatron_fork.analysis.report_markdown import analysis_markdown
from megatron_fork.analysis.temperature_sweep import SweepConfig, run_sweep, threshold_from_table
from megatron_fork.atomic_files import write_text_atomically
from megatron_fork.data.report import LoadReport
from megatron_fork.parallel.rank0 import from_rank0
from megatron_fork.trainer.trainer_config import ParallelConfig


@dataclass(frozen=True)
class AnalysisConfig:
    base: str
    """The base model: a Hugging Face folder or a Megatron checkpoint."""
    out: str
    """The report folder."""
    rl: str | None = None
    """The model after RL (compared with the base on the base's responses)."""
    checkpoints: tuple[str, ...] = ()
    """Further checkpoints for the overlap-vs-step curve (their step read from each; the RL
    model may be one of them: each model is scored once)."""
    prompt_set: str = SYNTHETIC
    """"synthetic" (the task's held-out split) or a prompt file (JSONL/JSON/parquet)."""
    prompts: int = 64
    """Prompts collected per model (one response each)."""
    max_new_tokens: int = 48
    temperature: float = 1.0
    rho: float = 0.2
    """The share of tokens that are forking tokens, as the trainer's ``loss.rho``: the top
    ``rho`` by entropy, exactly ceil(rho * N) of N tokens (ties to the earlier token); at most
    0.5."""
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
        check_top_share(self.rho)


def write_analysis(config: AnalysisConfig) -> Path:
    start = time.perf_counter()
    out = Path(config.out)
    from_rank0(lambda: check_settings(config))  # before any weights load
    models = {"base": config.base, **({"rl": config.rl} if config.rl else {})}
    numbers = {"models": {}}
    for name, source in models.items():
        numbers["models"][name], prompt_rows = _model_report(config, name, source)
    if config.rl or config.checkpoints:
        numbers["evolution"] = _evolution(config)
    if config.sweep is not None:
        numbers["sweep"] = _sweep(config, models[config.sweep_model])
    numbers["settings"] = {
        "prompt_set": config.prompt_set, "prompts": config.prompts, "rho": config.rho,
        "max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
        "prompt_rows": prompt_rows, "wall_seconds": time.perf_counter() - start,
    }  # fmt: skip
    from_rank0(lambda: write_text_atomically(out / "report.md", analysis_markdown(numbers)))
    return out


def check_settings(config: AnalysisConfig) -> None:
    """Raise for settings that would fail after collecting, reading only model configs,
    tokenizers and the first rows of the prompt file (no weights)."""
    roles = [("--base", config.base), *([("--rl", config.rl)] if config.rl else [])]
    roles += [("--checkpoints", source) for source in config.checkpoints]
    vocabularies = {}
    for role, source in roles:
        if source not in vocabularies:
            try:
                vocabularies[source] = read_vocabulary(source)
            except Exception as error:  # any reason the source cannot be read, named
                reason = str(error).removeprefix(f"{source}: ")
                raise ValueError(f"{role} {source}: cannot be analysed: {reason}") from error
        base = vocabularies[config.base]
        check_same_vocabulary(config.base, base, source, vocabularies[source])
    read = LoadReport(config.prompt_set)
    if next(prompt_examples(config.prompt_set, 1, report=read), None) is None:
        raise ValueError(f"the prompt set is empty: {read.summary()}")
    sweep = config.sweep
    if sweep is None:
        return
    if sweep.threshold is None and config.temperature != 1.0:
        raise ValueError(
            f"the sweep's threshold would come from the {config.sweep_model} token table, "
            f"collected at temperature {config.temperature}; the two-temperature rule compares "
            "entropies at T = 1: collect at temperature 1, or give the sweep a fixed threshold"
        )
    answered = LoadReport(config.prompt_set)
    first = next(prompt_examples(config.prompt_set, 1, need_answers=True, report=answered), None)
    if first is None:
        raise ValueError(
            f"the sweep's eval set has no prompt with a gold answer ({answered.summary()}): "
            "give a prompt file with answers, or no sweep"
        )


def later_models(config: AnalysisConfig) -> list[str]:
    """The models that score the base's responses, each once (the same folder written twice
    is one), in the order given: the checkpoints, then the RL model unless it is among them."""
    seen, models = set(), []
    for source in (*config.checkpoints, *([config.rl] if config.rl else [])):
        if (key := Path(source).resolve()) not in seen:
            seen.add(key)
            models.append(source)
    return models


def _collect_config(config: AnalysisConfig, source: str, table: Path) -> CollectConfig:
    return CollectConfig(
        source, str(table), temperature=config.temperature, max_new_tokens=config.max_new_tokens,
        seed=config.seed, prompt_set=config.prompt_set, parallel=config.parallel,
    )  # fmt: skip


def _model_report(config: AnalysisConfig, name: str, source: str) -> tuple[dict, str]:
    """Collect the model's own responses; its statistics, plots and rendered responses. Also
    returns the prompt file's skipped rows (its ``LoadReport`` summary; "" when none)."""
    folder = Path(config.out) / name
    from_rank0(lambda: folder.mkdir(parents=True, exist_ok=True))
    read = LoadReport(config.prompt_set)  # filled on rank 0, as the prompts are read
    prompts = (e.prompt for e in prompt_examples(config.prompt_set, config.prompts, report=read))
    table = collect(_collect_config(config, source, folder / "tokens.parquet"), prompts, read)

    def report():
        write_entropy_report(table, folder, config.rho)
        write_html(table, folder / "responses.html", config.render_samples, config.rho)
        write_png(table, folder / "responses.png", min(4, config.render_samples), config.rho)
        stats = json.loads((folder / "stats.json").read_text())
        return stats, read.summary() if read.rows_skipped else ""

    return from_rank0(report)


def _evolution(config: AnalysisConfig) -> dict:
    """Score the base's responses with every later model; compare each with the base."""
    out = Path(config.out)
    base_table = out / "base" / "tokens.parquet"
    folder = out / "evolution"
    from_rank0(lambda: folder.mkdir(parents=True, exist_ok=True))
    later = later_models(config)
    scored = []
    for index, source in enumerate(later):
        table = folder / f"{index:02d}_{Path(source).name}.parquet"
        collect_given(_collect_config(config, source, table), base_table)
        scored.append((source, checkpoint_step(source), str(table)))
    # The comparison is with the RL model (or the last checkpoint), wherever it was listed.
    compared = Path(config.rl or later[-1]).resolve()
    compared_table = next(t for s, _, t in scored if Path(s).resolve() == compared)

    def compare():
        series = overlap_series(base_table, [("base", 0, str(base_table)), *scored], config.rho)
        comparison = compare_tables(base_table, compared_table, config.rho)
        evolution = {"comparison": comparison, "series": series}
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
        where = f"the smallest entropy of `{config.sweep_model}`'s top {sweep.rho:.0%} of tokens"
    else:
        threshold, where = sweep.threshold, "fixed"
    analysis = open_model(source, config.parallel)
    engine = analysis.rollout_engine()

    def run():
        read = LoadReport(config.prompt_set)
        examples = list(
            prompt_examples(config.prompt_set, sweep.max_prompts, need_answers=True, report=read)
        )
        result = run_sweep(engine, analysis.tokenizer, analysis.ids.eos, examples, sweep, threshold)
        result.update(model=source, threshold_source=where)
        result.update(eval_rows=read.summary() if read.rows_skipped else "")
        out = Path(config.out)
        write_text_atomically(out / "sweep.json", json.dumps(result, indent=1) + "\n")
        plot_sweep(result, out / "sweep.png")
        return result

    return from_rank0(run)
