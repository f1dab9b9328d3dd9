"""Decoding temperature by entropy (the paper's experiment): sample with T_high at positions
whose entropy (of the untempered distribution) reaches a threshold and T_low elsewhere, for each
(T_high, T_low) of a small grid, and report accuracy (avg@k, pass@k) on an eval set with gold
answers.

Everything but the grid is the trainer's own evaluation: ``rollout_phase.evaluate_avg_at_k``
with its seeds (so every cell draws from the same random streams, and a cell with T_high = T_low
= T is exactly plain sampling at T), the ``GroupSampler`` and the math reward scorer. The
threshold is the smallest entropy among the model's own top-rho tokens at T = 1 (rho = 0.2: its
80th percentile, or the next observed value when 0.8 * N is an integer; the paper's 0.672 is
Qwen3-8B's 80th percentile), or a fixed value."""

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from megatron_fork.analysis.overlap import check_top_share, top_threshold
from megatron_fork.analysis.token_table import entropy_column, read_token_table
from megatron_fork.data.types import PromptExample
from megatron_fork.rewards.config import MathRewardConfig
from megatron_fork.rewards.scorer import MathRewardScorer
from megatron_fork.rl.rollout_phase import GroupSampler, evaluate_avg_at_k
from megatron_fork.rollout.types import SamplingParams


@dataclass(frozen=True)
class SweepConfig:
    high_temperatures: tuple[float, ...] = (0.6, 1.0, 1.4)
    """T_high: the temperature at positions with entropy >= the threshold."""
    low_temperatures: tuple[float, ...] = (0.6, 1.0, 1.4)
    """T_low: the temperature everywhere else."""
    threshold: float | None = None
    """A fixed entropy threshold (nats); None = the smallest entropy among the top ``rho`` of
    the model's token table."""
    rho: float = 0.2
    """The share of tokens at or above the threshold taken from a table (the trainer's rho)."""
    samples_per_prompt: int = 4
    """k of avg@k."""
    max_prompts: int = 64
    """Eval prompts used (the first this many)."""
    max_new_tokens: int = 48
    top_p: float = 1.0
    """1.0 by default so that the temperatures alone shape the distribution (the trainer's eval
    uses 0.7, the paper's validation setting)."""
    seed: int = 1234
    """The eval seed: every cell uses the same per-(prompt, sample) seeds."""

    def __post_init__(self):
        if not self.high_temperatures or not self.low_temperatures:
            raise ValueError("the temperature grid is empty")
        if min(self.high_temperatures) <= 0:
            raise ValueError("every T_high must be > 0")
        if min(self.low_temperatures) < 0:
            raise ValueError("every T_low must be >= 0 (0 = greedy)")
        check_top_share(self.rho)


def threshold_from_table(table_path, rho: float) -> float:
    """The smallest entropy among the top ``rho`` share of a token table collected at T = 1
    (the engine compares the untempered distribution's entropy with the threshold)."""
    table, metadata = read_token_table(table_path, ["entropy"])
    if metadata.get("temperature") != 1.0:
        raise ValueError(
            f"{table_path}: entropies at temperature {metadata.get('temperature')}; the "
            "two-temperature rule compares entropies at T = 1: collect at temperature 1"
        )
    return top_threshold(entropy_column(table), rho)


def sweep_temperatures(
    sampler: GroupSampler,
    examples: Sequence[PromptExample],
    config: SweepConfig,
    threshold: float,
    on_cell: Callable[[dict], None] | None = None,
) -> dict:
    """avg@k and pass@k for every (T_high, T_low) of the grid (JSON-ready)."""
    if not examples:
        raise ValueError("the temperature sweep's eval set is empty")
    cells = []
    for t_high in config.high_temperatures:
        for t_low in config.low_temperatures:
            sampling = SamplingParams(
                temperature=t_low,
                high_entropy_temperature=t_high,
                entropy_threshold=threshold,
                top_p=config.top_p,
                max_new_tokens=config.max_new_tokens,
            )
            metrics = evaluate_avg_at_k(
                sampler, examples, config.samples_per_prompt, sampling, config.seed
            )
            cell = {
                "t_high": t_high,
                "t_low": t_low,
                "avg_at_k": metrics["eval/avg_at_k"],
                "pass_at_k": metrics["eval/pass_at_k"],
            }
            cells.append(cell)
            if on_cell is not None:
                on_cell(cell)
    return {"config": asdict(config), "threshold": threshold, "prompts": len(examples),
            "cells": cells}  # fmt: skip


def run_sweep(engine, tokenizer, eos_id: int, examples, config: SweepConfig, threshold: float):
    """``sweep_temperatures`` with a fresh reward scorer (its workers stop afterwards)."""
    reward = MathRewardConfig(
        max_response_tokens=config.max_new_tokens,
        overlong_buffer=max(1, config.max_new_tokens // 4),
        num_workers=1,
    )
    with MathRewardScorer(reward) as scorer:
        sampler = GroupSampler(engine, tokenizer, scorer, eos_id)
        return sweep_temperatures(sampler, examples, config, threshold)
