"""The forking-token policy loss: DAPO's clipped surrogate on the selected tokens only.

With S the selected tokens, V the valid ones, N the normaliser (|V| or |S|, global) and
g_t = entropy_coef * H_t - kl_coef * kl_t the regularisers:
    regularizer_tokens="response" (the paper's code, verl's dp_actor):
        loss = -(1/N) sum_{t in S} o_t - (1/N_reg) sum_{t in V} g_t,   N_reg = |V| by default
    regularizer_tokens="selected":
        loss = -(1/N) sum_{t in S} [o_t + g_t]   (no gradient reaches an unselected token)
One call is one micro-batch, so ``microbatch_selected_mean`` counts |S| here like
``selected_tokens``; its weighting of micro-batches by rows is step plumbing
(megatron_fork.trainer.forward_step), which passes each micro-batch's N in ``normalizer`` and
N_reg in ``regularizer_normalizer``. Over a group, each rank returns its share (its tokens' sum
over the global N), so the ranks' losses add up to the loss of the whole scope.
"""

import dataclasses

import torch

from megatron_fork.forking.config import ForkingLossConfig
from megatron_fork.forking.metrics import forking_metrics
from megatron_fork.forking.selection import check_selection_inputs, select_forking_tokens
from megatron_fork.forking.surrogate import clipped_surrogate, k3_kl
from megatron_fork.parallel.groups import all_reduce_

_NORMALIZER_COUNTS = {
    "all_tokens": lambda valid, selected: valid.sum(),
    "selected_tokens": lambda valid, selected: selected.sum(),
    "microbatch_selected_mean": lambda valid, selected: selected.sum(),
}


def _check_loss_inputs(
    logprob, old_logprob, advantages, valid_mask, entropy, ref_logprob, selected, config
):
    named = {
        "logprob": logprob,
        "old_logprob": old_logprob,
        "advantages": advantages,
        "entropy": entropy,
    }
    if ref_logprob is not None:
        named["ref_logprob"] = ref_logprob
    if selected is not None:
        named["selected"] = selected
        if selected.dtype != torch.bool:
            raise TypeError(f"selected must be a bool mask, got {selected.dtype}.")
    for name, tensor in named.items():
        if tensor.shape != valid_mask.shape:
            raise ValueError(
                f"{name} {tuple(tensor.shape)} must have valid_mask's shape "
                f"{tuple(valid_mask.shape)}."
            )
        if tensor.device != valid_mask.device:
            raise ValueError(f"{name} on {tensor.device} but valid_mask on {valid_mask.device}.")
    check_selection_inputs(entropy, valid_mask)
    if config.kl_coef > 0 and ref_logprob is None:
        raise ValueError("kl_coef > 0 needs ref_logprob (log-probs of the reference policy).")


def local_normalizer_count(valid_mask, selected, config: ForkingLossConfig) -> torch.Tensor:
    """This rank's tokens counted by the normaliser: valid or selected (int64 0-dim)."""
    return _NORMALIZER_COUNTS[config.normalizer](valid_mask, selected)


def global_normalizer(valid_mask, selected, config: ForkingLossConfig, group=None) -> torch.Tensor:
    """N over the ranks of ``group``: valid tokens or selected tokens (fp64 0-dim)."""
    count = local_normalizer_count(valid_mask, selected, config).to(torch.float64)
    return all_reduce_(count.reshape(1), group)[0]


def _regularizer(logprob, entropy, ref_logprob, mask, config: ForkingLossConfig):
    """[...] g_t = entropy_coef * H_t - kl_coef * k3_t (None when both are off); the KL's
    log-ratio is zeroed outside ``mask`` before its exp (a huge one there would give NaN)."""
    if not config.has_regularizer:
        return None
    terms = torch.zeros_like(logprob)
    if config.kl_coef > 0:
        terms = terms - config.kl_coef * k3_kl(torch.where(mask, ref_logprob - logprob, 0.0))
    if config.entropy_coef > 0:
        terms = terms + config.entropy_coef * entropy
    return terms


def _safe(normalizer, dtype) -> torch.Tensor:
    # N = 0 only when nothing is counted (the sum is 0 too): divide by 1. N may be below 1 (a
    # micro-batch's |S_m| / rows_m under microbatch_selected_mean in per-token mode).
    normalizer = torch.as_tensor(normalizer, dtype=torch.float64)
    return torch.where(normalizer > 0, normalizer, 1.0).to(dtype)


def forking_policy_loss(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    valid_mask: torch.Tensor,
    entropy: torch.Tensor,
    config: ForkingLossConfig,
    group=None,
    *,
    selected: torch.Tensor | None = None,
    normalizer: torch.Tensor | float | None = None,
    ref_logprob: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
    regularizer_normalizer: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This rank's share of the forking-token loss, and metrics reduced over ``group``.

    Args:
        logprob, old_logprob, advantages, entropy: [...] per token (entropy may carry gradient,
            used by the entropy bonus).
        valid_mask: [...] bool, response tokens.
        config: the loss options.
        group: process group spanning the selection scope; None = this process only.
        selected: precomputed selection (e.g. a whole step's, from the old-logprob pass);
            None = select here over ``group`` with ``config``.
        normalizer: precomputed global N (e.g. over all micro-batches of the step); None = the
            count of this call's tokens over ``group``.
        ref_logprob: [...] reference-policy log-probs, needed when ``config.kl_coef > 0``.
        order: [...] canonical token index for tie-breaking and ``random`` (see selection).
        regularizer_normalizer: precomputed N_reg of the KL / entropy terms under
            ``regularizer_tokens="response"``; None = the valid tokens over ``group``.
    Returns:
        (0-dim loss, metrics dict of 0-dim tensors).
    """
    _check_loss_inputs(
        logprob, old_logprob, advantages, valid_mask, entropy, ref_logprob, selected, config
    )
    if selected is None:
        selected = select_forking_tokens(
            entropy, valid_mask, config.rho, config.strategy, group, config.seed, order
        )
    selected = selected & valid_mask
    if normalizer is None:
        normalizer = global_normalizer(valid_mask, selected, config, group)
    # Log-ratios are zeroed outside the selection before any exp: a huge ratio at a padding or
    # unselected slot would otherwise give 0 * inf = NaN in the backward and poison every grad.
    log_ratio = torch.where(selected, logprob - old_logprob, 0.0)
    surrogate = clipped_surrogate(
        log_ratio, advantages, config.eps_low, config.eps_high, config.dual_clip_c
    )
    per_token = surrogate.objective
    on_response = config.regularizer_tokens == "response"
    mask = valid_mask if on_response else selected
    regularizer = _regularizer(logprob, entropy, ref_logprob, mask, config)
    if regularizer is not None and not on_response:
        per_token = per_token + regularizer
    total = torch.where(selected, per_token, 0.0).sum()
    loss = -total / _safe(normalizer, total.dtype)
    if regularizer is not None and on_response:
        if regularizer_normalizer is None:
            regularizer_normalizer = global_normalizer(
                valid_mask, selected, dataclasses.replace(config, normalizer="all_tokens"), group
            )
        reg_total = torch.where(valid_mask, regularizer, 0.0).sum()
        loss = loss - reg_total / _safe(regularizer_normalizer, reg_total.dtype)
    observed_log_ratio = torch.where(valid_mask, logprob - old_logprob, 0.0).detach()
    metrics = forking_metrics(entropy, valid_mask, selected, surrogate, observed_log_ratio, group)
    return loss, metrics
