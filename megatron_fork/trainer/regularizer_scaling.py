"""Denominators of the KL and entropy-bonus terms under ``regularizer_tokens="response"``.

verl's dp_actor (the paper's code) aggregates them with ``agg_loss(..., response_mask,
"token-mean")``: a token mean over the response tokens, independent of the forking selection.
Here that mean follows the surrogate's normaliser (forward_step's docstring for the contracts):
- all_tokens: over the step's valid tokens |V|, the surrogate's own N, so nothing to add
  (per-token mode: Megatron divides both by the summed counts, |V|).
- selected_tokens: over |V| too, but the surrogate divides by |S|. Not per-token: N_reg = |V|.
  Per-token: Megatron divides every micro-batch by the summed counts |S|, so N_reg = |V| / |S|
  and the term ends up over |V|.
- microbatch_selected_mean (verl's dynamic batch): over micro-batch m's valid tokens V_m (its CP
  shards together), weighted by rows_m / R like the surrogate: N_reg = |V_m| * unit / rows_m,
  unit = R, or 1 in per-token mode (Megatron divides by the summed rows, R).
"""

import dataclasses

import torch

from megatron_fork.forking.config import ForkingLossConfig
from megatron_fork.parallel.groups import all_reduce_
from megatron_fork.trainer.parallel_groups import LossGroups
from megatron_fork.trainer.step_tokens import microbatch_rows, step_normalizer


def _on_response(config: ForkingLossConfig) -> bool:
    return config.has_regularizer and config.regularizer_tokens == "response"


def step_regularizer_normalizer(
    config: ForkingLossConfig, microbatches, groups: LossGroups, per_token: bool
) -> torch.Tensor | None:
    """The step's N_reg under ``selected_tokens`` (|V|, or |V| / |S| in per-token mode); None
    where the micro-batches need none. Collective over DP x CP (every rank of a stage calls it)."""
    if not _on_response(config) or config.normalizer != "selected_tokens":
        return None
    valid = step_normalizer(
        dataclasses.replace(config, normalizer="all_tokens"), microbatches, groups
    )
    valid = valid.to(torch.float64)
    if not per_token:
        return valid
    selected = step_normalizer(config, microbatches, groups).to(torch.float64)
    return valid / selected.clamp(min=1.0)


def _same_as_surrogate(batch, config, scaling, groups, normalizer):
    return normalizer


def _step_constant(batch, config, scaling, groups, normalizer):
    if scaling.regularizer_normalizer is None:
        raise ValueError(
            "regularizer_tokens=response under normalizer=selected_tokens needs the step's "
            "N_reg: pass regularizer_normalizer=step_regularizer_normalizer(...) to "
            "StepLossScaling."
        )
    return scaling.regularizer_normalizer


def _microbatch_response_mean(batch, config, scaling, groups, normalizer):
    unit = 1.0 if scaling.per_token else scaling.normalizer
    num_valid = batch.valid_mask.sum().to(torch.float64).reshape(1)
    num_valid = all_reduce_(num_valid, groups.cp)[0]
    return num_valid * unit / max(microbatch_rows(batch), 1)


_MICROBATCH_REGULARIZER_NORMALIZERS = {
    "all_tokens": _same_as_surrogate,
    "selected_tokens": _step_constant,
    "microbatch_selected_mean": _microbatch_response_mean,
}


def microbatch_regularizer_normalizer(
    batch, config: ForkingLossConfig, scaling, groups: LossGroups, normalizer
) -> torch.Tensor | float | None:
    """N_reg of one micro-batch (``normalizer``: its surrogate N); None when the terms are off
    or ride on the selected tokens."""
    if not _on_response(config):
        return None
    table = _MICROBATCH_REGULARIZER_NORMALIZERS[config.normalizer]
    return table(batch, config, scaling, groups, normalizer)
