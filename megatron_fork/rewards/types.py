"""What the math reward returns: one ``SampleReward`` per response and a ``RewardBatch`` with
the rewards in input order and the counts a training loop logs."""

import enum
from dataclasses import dataclass


class SampleStatus(enum.Enum):
    """How a response's correctness was decided. Only CORRECT earns the correct reward."""

    CORRECT = "correct"
    """Final boxed answer equals the gold answer."""
    INCORRECT = "incorrect"
    """Verified, not equal (includes a box math-verify cannot parse)."""
    NO_ANSWER = "no_answer"
    """No complete, non-empty final box in the examined tail."""
    TIMEOUT = "timeout"
    """Verification exceeded the per-sample time limit; its worker was killed and replaced."""
    ERROR = "error"
    """Verification raised (e.g. an unparseable gold) or its worker kept crashing."""


@dataclass(frozen=True)
class SampleReward:
    """The reward of one response and how it was reached."""

    reward: float
    """correctness_reward + overlong_reward: what the advantage is computed from."""
    correctness_reward: float
    """config.correct_reward if status is CORRECT, else config.incorrect_reward."""
    overlong_reward: float
    """DAPO overlong shaping term (<= 0; 0 when shaping is off)."""
    status: SampleStatus
    answer: str | None
    """The extracted box content; None for NO_ANSWER."""
    detail: str = ""
    """Why, for TIMEOUT and ERROR (the exception text); empty otherwise."""


@dataclass(frozen=True)
class RewardCounts:
    """Per-batch tallies. verified = correct + incorrect; every sample is in exactly one of
    correct, incorrect, no_answer, timeouts, errors."""

    total: int
    verified: int
    correct: int
    no_answer: int
    timeouts: int
    errors: int

    @classmethod
    def of(cls, samples: list[SampleReward]) -> "RewardCounts":
        """Tally ``samples`` by status."""
        n = {status: 0 for status in SampleStatus}
        for sample in samples:
            n[sample.status] += 1
        return cls(
            total=len(samples),
            verified=n[SampleStatus.CORRECT] + n[SampleStatus.INCORRECT],
            correct=n[SampleStatus.CORRECT],
            no_answer=n[SampleStatus.NO_ANSWER],
            timeouts=n[SampleStatus.TIMEOUT],
            errors=n[SampleStatus.ERROR],
        )


@dataclass(frozen=True)
class RewardBatch:
    """Rewards of a batch of responses, in input order."""

    rewards: list[float]
    samples: list[SampleReward]
    counts: RewardCounts
