r"""The verifiable math reward: final ``\boxed{}`` answer checked against the gold answer by
math-verify in time-limited worker processes, plus DAPO overlong shaping.

    with MathRewardScorer(MathRewardConfig()) as scorer:   # starts the workers once
        batch = scorer.score(responses, golds, response_lengths)
    batch.rewards, batch.counts.timeouts, ...

Extraction (cheap, bounded) runs in the calling process; only (gold, answer) pairs travel to the
workers. Safe to call from any thread, e.g. a rollout server's.

Workers are started with "spawn" (or "forkserver"), which re-imports the launching script in
each worker: a script that builds a scorer must guard its entry point with
``if __name__ == "__main__":``.
"""

import logging

from megatron_fork.rewards.boxed import extract_last_boxed
from megatron_fork.rewards.config import MathRewardConfig
from megatron_fork.rewards.equivalence import VerifyFn, math_verify_equal
from megatron_fork.rewards.pool import TaskOutcome, TimeLimitedPool
from megatron_fork.rewards.shaping import overlong_reward
from megatron_fork.rewards.types import RewardBatch, RewardCounts, SampleReward, SampleStatus


def _init_worker() -> None:
    """Worker start-up: import math-verify and run one comparison, so that neither cost is
    charged to the first sample's time limit; silence math-verify's once-per-process warning
    that its own (signal) timeout is off: the pool enforces the limit instead."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    math_verify_equal("1", "1")


def _status_of(outcome: TaskOutcome) -> SampleStatus:
    """Map a verification task's outcome to the sample's status."""
    if outcome.kind == "timeout":
        return SampleStatus.TIMEOUT
    if outcome.kind == "error":
        return SampleStatus.ERROR
    return SampleStatus.CORRECT if outcome.value else SampleStatus.INCORRECT


class MathRewardScorer:
    """Owns the worker pool; reuse one scorer for the whole run (starting workers takes seconds).

    ``verify_fn`` is FOR TESTS ONLY: a module-level ``(gold, answer) -> bool`` standing in for
    math-verify (e.g. one that never returns, to exercise the time limit). Leave it unset.
    """

    def __init__(
        self, config: MathRewardConfig | None = None, verify_fn: VerifyFn = math_verify_equal
    ):
        self.config = config or MathRewardConfig()
        self._verify_fn = verify_fn
        self._pool = TimeLimitedPool(
            num_workers=self.config.num_workers,
            time_limit_s=self.config.time_limit_s,
            start_method=self.config.start_method,
            startup_timeout_s=self.config.startup_timeout_s,
            initializer=_init_worker,
        )

    @property
    def worker_restarts(self) -> int:
        """How many times the workers were replaced (after timeouts or crashes)."""
        return self._pool.restarts

    def score(
        self, responses: list[str], golds: list[str], response_lengths: list[int]
    ) -> RewardBatch:
        """Rewards of ``responses`` (decoded text) against ``golds`` (plain text or LaTeX);
        ``response_lengths`` in tokens drive the overlong shaping. All three align."""
        if not len(responses) == len(golds) == len(response_lengths):
            raise ValueError(
                f"responses, golds and response_lengths differ in length: {len(responses)}, "
                f"{len(golds)}, {len(response_lengths)}"
            )
        cfg = self.config
        answers = [
            extract_last_boxed(r, cfg.max_scan_chars, cfg.max_answer_chars) for r in responses
        ]
        to_verify = [i for i, answer in enumerate(answers) if answer is not None]
        outcomes = self._pool.run(self._verify_fn, [(golds[i], answers[i]) for i in to_verify])
        outcome_of = dict(zip(to_verify, outcomes, strict=True))
        samples = [
            self._sample(answers[i], outcome_of.get(i), response_lengths[i])
            for i in range(len(responses))
        ]
        return RewardBatch(
            rewards=[s.reward for s in samples], samples=samples, counts=RewardCounts.of(samples)
        )

    def _sample(self, answer: str | None, outcome: TaskOutcome | None, length: int) -> SampleReward:
        """One response's reward from its extracted answer, verification outcome and length."""
        status = SampleStatus.NO_ANSWER if outcome is None else _status_of(outcome)
        correctness = (
            self.config.correct_reward
            if status is SampleStatus.CORRECT
            else self.config.incorrect_reward
        )
        shaping = overlong_reward(length, self.config)
        return SampleReward(
            reward=correctness + shaping,
            correctness_reward=correctness,
            overlong_reward=shaping,
            status=status,
            answer=answer,
            detail=outcome.error if outcome is not None else "",
        )

    def close(self) -> None:
        """Stop the workers. Idempotent."""
        self._pool.close()

    def __enter__(self) -> "MathRewardScorer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def score_responses(
    responses: list[str],
    golds: list[str],
    response_lengths: list[int],
    config: MathRewardConfig | None = None,
) -> RewardBatch:
    """One-shot ``MathRewardScorer(config).score(...)``: starts and stops workers on every call,
    so a training loop should keep a ``MathRewardScorer`` instead."""
    with MathRewardScorer(config) as scorer:
        return scorer.score(responses, golds, response_lengths)
