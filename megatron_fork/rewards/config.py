"""Configuration of the verifiable math reward. Validated on construction."""

from dataclasses import dataclass


@dataclass(frozen=True)
class MathRewardConfig:
    """Reward of one response = correctness reward + overlong shaping (DAPO).

    Defaults follow the paper's recipe (PAPER.md, "Training recipe"): +1/-1 rewards, max response
    20480 tokens, overlong buffer 4096, penalty factor 1.0. For a 1/0 reward set
    ``incorrect_reward=0.0``.
    """

    correct_reward: float = 1.0
    """Reward of a response whose final boxed answer equals the gold answer."""
    incorrect_reward: float = -1.0
    """Reward of every other response: wrong, no box, unparseable, timed out or errored. -1 as
    DAPO; 0.0 for the 1/0 scheme."""
    overlong_shaping: bool = True
    """Add DAPO's soft overlong punishment (see ``shaping.overlong_reward``). False: add nothing."""
    max_response_tokens: int = 20480
    """L_max: the generation cap; a response of L_max tokens gets the full penalty."""
    overlong_buffer: int = 4096
    """L_buf: the penalty ramps linearly from 0 at L_max - L_buf tokens to -penalty at L_max."""
    overlong_penalty_factor: float = 1.0
    """Scale of the overlong penalty (its value at and beyond L_max is -factor)."""
    time_limit_s: float = 5.0
    """Per-sample wall-clock limit on verification (parse + compare of gold and answer), from the
    moment the sample is handed to an idle worker. Past it the worker is killed and replaced, and
    the sample gets ``incorrect_reward`` and is counted as a timeout."""
    num_workers: int = 2
    """Worker processes verifying in parallel (each holds sympy and math-verify: about 60 MB
    resident)."""
    start_method: str = "spawn"
    """multiprocessing start method of the workers: "spawn" or "forkserver" (never "fork": the
    caller may hold threads, CUDA or process groups that must not be forked)."""
    startup_timeout_s: float = 120.0
    """Limit on starting the workers (spawn + importing math-verify); past it scoring fails."""
    max_scan_chars: int = 10_000
    """Only the last this-many characters of a response are searched for the final box, so
    extraction is linear and bounded for any output size (see ``boxed``)."""
    max_answer_chars: int = 1_000
    """Box content longer than this counts as no answer (kept away from the symbolic parser)."""

    def __post_init__(self):
        if self.overlong_shaping and not 0 < self.overlong_buffer <= self.max_response_tokens:
            raise ValueError(
                "MathRewardConfig needs 0 < overlong_buffer <= max_response_tokens, got "
                f"overlong_buffer={self.overlong_buffer}, "
                f"max_response_tokens={self.max_response_tokens}."
            )
        if not self.overlong_penalty_factor >= 0:
            raise ValueError(
                f"overlong_penalty_factor must be >= 0, got {self.overlong_penalty_factor}."
            )
        for name in ("time_limit_s", "startup_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MathRewardConfig.{name} must be > 0, got {getattr(self, name)}.")
        for name in ("num_workers", "max_scan_chars", "max_answer_chars"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"MathRewardConfig.{name} must be >= 1, got {getattr(self, name)}."
                )
        if self.start_method not in ("spawn", "forkserver"):
            raise ValueError(
                f'start_method must be "spawn" or "forkserver", got {self.start_method!r}.'
            )
