"""DAPO's soft overlong punishment (Yu et al., arXiv 2503.14476, "Overlong Reward Shaping";
PAPER.md, "Overlong shaping"): a length-dependent reward added to the correctness reward, so
that over-long answers are discouraged gradually instead of by a cliff at the generation cap."""

from megatron_fork.rewards.config import MathRewardConfig


def overlong_reward(length: int, config: MathRewardConfig) -> float:
    """Extra reward of a response of ``length`` tokens; 0 when shaping is off.

    PAPER.md: a response of length L gets min(-(L - (L_max - L_buf)) / L_buf, 0) with penalty
    factor 1.0, and truncated ones -1. Here, with p = overlong_penalty_factor:

        L <= L_max - L_buf:           0
        L_max - L_buf < L <= L_max:   -(L - (L_max - L_buf)) / L_buf * p   (reaches -p at L_max)
        L > L_max (truncated):        -p   (= -1 at the paper's p = 1.0)

    verl's DAPO code computes the middle line for every length (a response never exceeds L_max
    there); the last line is DAPO's rule for truncated responses, scaled like the rest by p.
    """
    if not config.overlong_shaping:
        return 0.0
    l_max, l_buf = config.max_response_tokens, config.overlong_buffer
    p = config.overlong_penalty_factor
    if length > l_max:
        return -p
    exceed = length - (l_max - l_buf)
    return -exceed / l_buf * p if exceed > 0 else 0.0
