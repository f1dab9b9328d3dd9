"""DAPO dynamic sampling: keep only prompt groups whose rewards differ, and generate more
rounds until the batch is full (a group of equal rewards has zero advantage everywhere, so it
would only dilute the batch).

When the rounds run out before the batch is full, DAPO stops the run with an error
(verl recipe/dapo/dapo_ray_trainer.py raises ValueError once ``num_gen_batches`` reaches
``max_num_gen_batches``); this project can instead top the batch up with zero-advantage groups
(``on_exhausted``). Either way the step counts it (``dynamic_sampling/exhausted``)."""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

ON_EXHAUSTED = ("top_up", "error")


@dataclass(frozen=True)
class DynamicSamplingConfig:
    enabled: bool = True
    """False: keep every group of the first round (plain GRPO)."""
    max_rounds: int = 3
    """Generation rounds at most per step (DAPO's max_num_gen_batches); >= 1. The paper's
    script allows 10."""
    on_exhausted: str = "top_up"
    """What a step does when ``max_rounds`` ran out before the batch is full. top_up: train on
    the informative groups found, the batch topped up with zero-advantage groups (this
    project's default; every step keeps its shape). error: stop with ``DynamicSamplingExhausted``
    naming the knob to raise, as DAPO does (the paper's behaviour)."""

    def __post_init__(self):
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {self.max_rounds}")
        if self.on_exhausted not in ON_EXHAUSTED:
            raise ValueError(
                f"unknown on_exhausted {self.on_exhausted!r}; choose one of {ON_EXHAUSTED}."
            )


class DynamicSamplingExhausted(RuntimeError):
    """``max_rounds`` ran out before the batch was full, under ``on_exhausted="error"``."""


@dataclass
class FilledBatch:
    groups: list
    """At most ``target_groups`` informative groups, in generation order."""
    rounds: int = 0
    generated_groups: int = 0
    dropped_equal_reward: int = 0
    short: bool = False
    """True when ``max_rounds`` ran out before the batch was full (it holds fewer groups)."""
    dropped_per_round: list = field(default_factory=list)


def is_informative(rewards: torch.Tensor) -> bool:
    """A group is worth training on when its rewards are not all equal."""
    return bool((rewards != rewards[0]).any())


def fill_batch(
    generate_round: Callable[[int], list],
    rewards_of: Callable[[object], torch.Tensor],
    target_groups: int,
    config: DynamicSamplingConfig = DynamicSamplingConfig(),
) -> FilledBatch:
    """Call ``generate_round(round_index)`` until ``target_groups`` informative groups are
    collected or ``config.max_rounds`` rounds ran; ``rewards_of(group)`` gives its [G] rewards.
    A short batch is returned (``short``) under ``on_exhausted="top_up"`` and raises
    ``DynamicSamplingExhausted`` under ``"error"``."""
    batch = FilledBatch(groups=[])
    rounds = config.max_rounds if config.enabled else 1
    while batch.rounds < rounds and len(batch.groups) < target_groups:
        generated = generate_round(batch.rounds)
        batch.rounds += 1
        batch.generated_groups += len(generated)
        kept = [g for g in generated if not config.enabled or is_informative(rewards_of(g))]
        batch.dropped_per_round.append(len(generated) - len(kept))
        batch.dropped_equal_reward += len(generated) - len(kept)
        batch.groups.extend(kept)
    batch.short = len(batch.groups) < target_groups
    batch.groups = batch.groups[:target_groups]
    if batch.short and config.enabled and config.on_exhausted == "error":
        raise DynamicSamplingExhausted(
            f"dynamic sampling found {len(batch.groups)} of {target_groups} informative groups "
            f"(rewards not all equal) in {batch.rounds} rounds ({batch.generated_groups} groups "
            f"generated, {batch.dropped_equal_reward} dropped): raise "
            f"dynamic_sampling.max_rounds (now {config.max_rounds}), or set "
            f"dynamic_sampling.on_exhausted=top_up to train on a topped-up batch; the data may "
            f"be too hard or too easy for the model."
        )
    return batch
