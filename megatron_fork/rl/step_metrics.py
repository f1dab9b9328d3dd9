"""One dict of metrics for an RL step from the per-micro-batch dicts the loss returns.

Each micro-batch's metrics are already reduced over its ranks; across micro-batches, token
means are weighted by their tokens (valid tokens, or selected tokens for the per-selected
metrics), counts add up, and "loss" (whose micro-batch values sum to one optimizer step's loss)
is averaged over the optimizer steps.
"""

import math

import torch

_COUNTS = ("num_valid_tokens", "num_selected_tokens")
_PER_SELECTED = ("entropy_selected_mean", "clip_frac_low", "clip_frac_high", "clip_frac_dual")
_PER_VALID = ("selected_fraction", "entropy_mean", "approx_kl")


def _value(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def _weighted_mean(outputs: list[dict], key: str, weight_key: str) -> float:
    pairs = [(_value(o[key]), _value(o[weight_key])) for o in outputs]
    pairs = [(v, w) for v, w in pairs if w > 0 and not math.isnan(v)]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else float("nan")


def combine_microbatch_metrics(
    outputs: list[dict], prefix: str = "", optimizer_steps: int = 1
) -> dict:
    """``outputs``: every micro-batch's dict of the step's ``optimizer_steps`` optimizer steps."""
    combined = {key: sum(_value(o[key]) for o in outputs) for key in _COUNTS}
    combined["loss"] = sum(_value(o["loss"]) for o in outputs) / optimizer_steps
    for key in _PER_SELECTED:
        combined[key] = _weighted_mean(outputs, key, "num_selected_tokens")
    for key in _PER_VALID:
        combined[key] = _weighted_mean(outputs, key, "num_valid_tokens")
    return {prefix + key: value for key, value in combined.items()}
