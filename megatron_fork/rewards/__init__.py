r"""Verifiable rewards for RLVR: the math reward (last ``\boxed{}`` answer checked by math-verify,
+1/-1 or 1/0, DAPO overlong shaping, per-sample time limit in worker processes).

Modules: ``boxed`` (answer extraction), ``equivalence`` (math-verify), ``shaping`` (overlong
term), ``pool`` (time-limited process pool), ``scorer`` (the batch API), ``config``, ``types``.
No torch or Megatron imports: rollout code may use it freely.
"""

from megatron_fork.rewards.boxed import extract_last_boxed, normalize_gold
from megatron_fork.rewards.config import MathRewardConfig
from megatron_fork.rewards.equivalence import GoldParseError, math_verify_equal
from megatron_fork.rewards.scorer import MathRewardScorer, score_responses
from megatron_fork.rewards.shaping import overlong_reward
from megatron_fork.rewards.types import RewardBatch, RewardCounts, SampleReward, SampleStatus

__all__ = [
    "GoldParseError",
    "MathRewardConfig",
    "MathRewardScorer",
    "RewardBatch",
    "RewardCounts",
    "SampleReward",
    "SampleStatus",
    "extract_last_boxed",
    "math_verify_equal",
    "normalize_gold",
    "overlong_reward",
    "score_responses",
]
