"""The rollout half of an RL step, on the controller (rank 0): prompts -> G responses each from
the engine -> rewards -> DAPO dynamic sampling -> GRPO advantages.

Every response is sampled with its own seed, derived from (run seed, step, round, prompt slot,
response index), so a step's rollouts are a function of the weights and the step alone: a
resumed run draws exactly what the uninterrupted run drew.

Request ids name (step, round, prompt slot, response), never the prompt: a round that crosses
an epoch boundary can hold one prompt twice, and sglang refuses a ``/generate`` batch that
repeats an id (400), or an id still in flight on the server. The fields have fixed widths, so
no id is a prefix of another (sglang aborts requests by id prefix).
"""

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from megatron_fork.data.prompt_stream import PromptStream
from megatron_fork.data.types import PromptExample
from megatron_fork.rewards.types import SampleStatus
from megatron_fork.rl.advantages import AdvantageConfig, group_advantages
from megatron_fork.rl.dynamic_sampling import DynamicSamplingConfig, fill_batch
from megatron_fork.rollout.types import GenerationRequest, Sample, SamplingParams

ID_WIDTHS = (8, 4, 6, 4)
"""Digits of an id's (step | 0, round | eval chunk, prompt slot, response) fields."""


def request_id(kind: str, *fields: int) -> str:
    """``kind`` ("r" rollout, "e" evaluation) then four zero-padded fields, e.g.
    ``r00000012-0001-000037-0003``; a field too wide for its digits raises, since a longer
    id could extend a shorter one."""
    if len(fields) != len(ID_WIDTHS):
        raise ValueError(f"a request id has {len(ID_WIDTHS)} fields, got {fields}")
    for value, width in zip(fields, ID_WIDTHS, strict=True):
        if not 0 <= value < 10**width:
            raise ValueError(f"request id field {value} does not fit {width} digits")
    return kind + "-".join(f"{v:0{w}d}" for v, w in zip(fields, ID_WIDTHS, strict=True))


def stable_seed(*parts) -> int:
    """A 63-bit seed from any printable parts, the same in every process and Python run."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class PromptGroup:
    """One prompt's G responses and their rewards."""

    example: PromptExample
    samples: tuple[Sample, ...]
    rewards: torch.Tensor
    """[G] float32: correctness + overlong shaping (what advantages are computed from)."""
    correct: torch.Tensor
    """[G] bool: the final answer verified equal to the gold one."""
    no_answer: int
    timeouts: int


@dataclass(frozen=True)
class RolloutBatch:
    """The groups one RL step trains on, their advantages and the rollout's metrics."""

    groups: list[PromptGroup]
    advantages: torch.Tensor
    """[len(groups), G] GRPO advantages."""
    metrics: dict
    informative_groups: int
    """The first this-many groups are trained on; the rest only fill a short batch (their
    rows carry no valid tokens into the loss)."""

    @property
    def samples(self) -> list[Sample]:
        return [s for g in self.groups for s in g.samples]

    @property
    def trainable(self) -> list[bool]:
        """Per sample (in ``samples`` order): False for the filler groups' responses."""
        return [i < self.informative_groups for i, g in enumerate(self.groups) for _ in g.samples]


class GroupSampler:
    """Turns prompts into scored ``PromptGroup``s: encode, generate, decode, verify."""

    def __init__(self, engine, tokenizer, scorer, eos_id: int):
        self.engine = engine
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.eos_id = eos_id

    def prompt_ids(self, example: PromptExample) -> tuple[int, ...]:
        ids = tuple(self.tokenizer.encode(example.prompt, add_special_tokens=False))
        if not ids:
            raise ValueError(f"prompt {example.id!r} encodes to no tokens")
        return ids

    def groups(
        self,
        examples: Sequence[PromptExample],
        num_samples: int,
        sampling: SamplingParams,
        seed_key: tuple,
        id_key: tuple[str, int, int],
    ) -> list[PromptGroup]:
        """``num_samples`` responses per example; response ``i`` of prompt slot ``j`` is seeded
        by ``(seed_key, j, i)`` and named ``request_id(*id_key, j, i)``."""
        requests = [
            GenerationRequest(
                prompt_ids=self.prompt_ids(example),
                sampling=_with_seed(sampling, self.eos_id, stable_seed(*seed_key, j, i)),
                request_id=request_id(*id_key, j, i),
            )
            for j, example in enumerate(examples)
            for i in range(num_samples)
        ]
        answers = [e.answer for e in examples for _ in range(num_samples)]
        samples, _, scored = self.generate_scored(requests, answers)
        out = []
        for j, example in enumerate(examples):
            part = slice(j * num_samples, (j + 1) * num_samples)
            statuses = [r.status for r in scored.samples[part]]
            out.append(
                PromptGroup(
                    example=example,
                    samples=tuple(samples[part]),
                    rewards=torch.tensor(scored.rewards[part], dtype=torch.float32),
                    correct=torch.tensor([s is SampleStatus.CORRECT for s in statuses]),
                    no_answer=statuses.count(SampleStatus.NO_ANSWER),
                    timeouts=statuses.count(SampleStatus.TIMEOUT),
                )
            )
        return out

    def generate_scored(self, requests: list[GenerationRequest], answers: list[str]):
        """Generate ``requests``, decode each response, verify it against its answer: (samples,
        texts, the scorer's result), in request order (the trainer's rollout and evaluation,
        and the standalone evaluator, all score this way)."""
        samples = self.engine.generate(requests)
        texts = [
            self.tokenizer.decode(list(s.output_ids), skip_special_tokens=True) for s in samples
        ]
        return (
            samples,
            texts,
            self.scorer.score(texts, answers, [len(s.output_ids) for s in samples]),
        )


def _with_seed(sampling: SamplingParams, eos_id: int, seed: int) -> SamplingParams:
    return replace(sampling, seed=seed, stop_token_ids=(eos_id,))


def collect_rollout_batch(
    sampler: GroupSampler,
    stream: PromptStream,
    step: int,
    run_seed: int,
    target_groups: int,
    prompts_per_round: int,
    num_samples: int,
    sampling: SamplingParams,
    dynamic: DynamicSamplingConfig,
    advantage: AdvantageConfig,
) -> RolloutBatch:
    """Generate rounds until ``target_groups`` informative groups (rewards not all equal in
    correctness) are found or the rounds run out. Run out, ``dynamic.on_exhausted="error"``
    raises ``DynamicSamplingExhausted`` (DAPO's behaviour; called on rank 0 inside
    ``scatter_rollout``, so the error reaches every rank). Under ``"top_up"`` a short batch is
    topped up with dropped groups so every step has the same shape (the config guarantees a
    round holds at least ``target_groups`` prompts); they are marked untrainable
    (``RolloutBatch.trainable``) and get zero advantage, so only the informative groups drive
    selection, normaliser and gradient, as in DAPO. ``dynamic_sampling/exhausted`` is 1 on a
    step whose rounds ran out."""
    generated: list[PromptGroup] = []

    def generate_round(round_index: int) -> list[PromptGroup]:
        examples = stream.take(prompts_per_round)
        seed_key = ("rollout", run_seed, step, round_index)
        groups = sampler.groups(examples, num_samples, sampling, seed_key, ("r", step, round_index))
        generated.extend(groups)
        return groups

    filled = fill_batch(generate_round, _correctness, target_groups, dynamic)
    kept = list(filled.groups)
    padding = [g for g in generated if not any(g is k for k in kept)][: target_groups - len(kept)]
    groups = kept + padding
    advantages = group_advantages(torch.stack([g.rewards for g in groups]), advantage)
    advantages[len(kept) :] = 0.0  # filler: equal correctness, so no signal (not even shaping)
    metrics = _rollout_metrics(generated, groups, filled, len(padding))
    return RolloutBatch(groups, advantages, metrics, informative_groups=len(kept))


def _correctness(group: PromptGroup) -> torch.Tensor:
    """Dynamic sampling filters on accuracy (as DAPO), not on the shaped reward."""
    return group.correct.float()


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0


def _rollout_metrics(generated, trained, filled, padded: int) -> dict:
    every = [s for g in generated for s in g.samples]
    correct = torch.cat([g.correct for g in generated])
    return {
        "rollout/accuracy": float(correct.float().mean()),
        "rollout/reward_mean": float(torch.cat([g.rewards for g in trained]).mean()),
        "rollout/response_length": _mean(len(s.output_ids) for s in every),
        "rollout/truncated_fraction": _mean(s.finish_reason.kind == "length" for s in every),
        "rollout/no_answer_fraction": sum(g.no_answer for g in generated) / len(every),
        "rollout/reward_timeouts": float(sum(g.timeouts for g in generated)),
        "dynamic_sampling/rounds": float(filled.rounds),
        "dynamic_sampling/generated_groups": float(filled.generated_groups),
        "dynamic_sampling/dropped_equal_reward": float(filled.dropped_equal_reward),
        "dynamic_sampling/padded_groups": float(padded),
        "dynamic_sampling/exhausted": float(filled.short),
    }


def evaluate_avg_at_k(
    sampler: GroupSampler,
    examples: Sequence[PromptExample],
    k: int,
    sampling: SamplingParams,
    seed: int,
    chunk: int = 256,
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """avg@k (mean correctness over k samples per prompt) and pass@k on ``examples``. Seeds
    depend on the eval seed and the prompt only, so every evaluation of a run draws alike."""
    correct = []
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        id_key = ("e", 0, start // chunk)  # one evaluation at a time: unique within it
        groups = sampler.groups(part, k, sampling, ("eval", seed, start), id_key)
        correct.extend(g.correct for g in groups)
        if on_progress is not None:
            on_progress(len(part))
    table = torch.stack(correct).float()  # [prompts, k]
    return {"eval/avg_at_k": float(table.mean()), "eval/pass_at_k": float(table.amax(1).mean())}
