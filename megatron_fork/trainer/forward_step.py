"""Forward-step functions for Megatron's ``get_forward_backward_func`` with a GPTModel.

The model returns vocab-parallel logits ([b, s, V/TP], ``labels=None``); on the last pipeline
stage the loss function turns them into fp32 log-probs and entropies over the TP group and
applies the forking-token loss. Other stages only pass activations on.

Loss scaling (Megatron's contract, megatron-core 0.16):
- ``calculate_per_token_loss=True``: we return (sum over this rank's selected tokens, this rank's
  count of normaliser tokens, metrics). The schedule adds the counts over micro-batches,
  ``finalize_model_grads`` adds them over DP x CP and divides the gradients by the total; DDP sums
  gradients. Nothing to precompute.
- ``calculate_per_token_loss=False``: the schedule multiplies a 2-tuple loss by CP size and
  divides by the number of micro-batches M; DDP averages gradients over DP x CP. We return this
  rank's share of the global loss (its sum over the global N) times M * DP, so the gradient is
  exactly sum(share) -- the CP factor cancels against DDP's average over CP.

Normalisers: ``all_tokens`` and ``selected_tokens`` divide every micro-batch by the step's
global token count N. ``microbatch_selected_mean`` is the public code's (verl's dp_actor
``update_policy`` with ``use_dynamic_bsz``): a token mean over micro-batch m's selected tokens
S_m, times ``loss_scale_factor = rows_m / ppo_mini_batch_size`` (this DP rank's rows), and FSDP
averages gradients over DP. With every DP rank holding R / DP rows (verl's dispatch) that is
    loss = sum_{DP ranks} sum_m (rows_m / R) * (1/|S_m|) sum_{t in S_m} l_t,
R the step's rows, i.e. each micro-batch divides by its own N_m = |S_m| * R / rows_m; packed
DP ranks hold unequal row counts (balanced by tokens), and the formula keeps the global R, so
every micro-batch weighs its share of the step's rows wherever it trains. Packed, rows are the
trained samples (filler samples are left out, as verl's DAPO drops them); padded rows count
fillers too, so with filler groups the two layouts scale this normaliser differently. In
per-token mode R is left to ``finalize_model_grads``: each micro-batch divides by
|S_m| / rows_m and counts its rows_m (on one CP rank), so the counts add up to R.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch

from megatron_fork.forking.config import ForkingLossConfig
from megatron_fork.forking.loss import forking_policy_loss, local_normalizer_count
from megatron_fork.forking.selection import select_forking_tokens
from megatron_fork.ops import vocab_parallel_logprob_entropy
from megatron_fork.parallel.groups import all_reduce_, group_rank
from megatron_fork.trainer.parallel_groups import LossGroups
from megatron_fork.trainer.policy_batch import PolicyMicroBatch
from megatron_fork.trainer.regularizer_scaling import microbatch_regularizer_normalizer
from megatron_fork.trainer.step_tokens import microbatch_rows


@dataclass(frozen=True)
class StepLossScaling:
    """How this step's micro-batch losses are scaled (see the module docstring)."""

    per_token: bool
    """Megatron config ``calculate_per_token_loss``."""
    num_microbatches: int
    normalizer: torch.Tensor | None = None
    """The step's ``step_normalizer`` (needed when not ``per_token``): global N, or the rows R
    under ``microbatch_selected_mean``."""
    regularizer_normalizer: torch.Tensor | None = None
    """The step's N_reg of the KL / entropy terms under ``selected_tokens`` with
    ``regularizer_tokens="response"`` (``step_regularizer_normalizer``); None otherwise."""

    def __post_init__(self):
        if not self.per_token and self.normalizer is None:
            raise ValueError(
                "calculate_per_token_loss=False needs the step's global normaliser: "
                "pass normalizer=step_normalizer(config, microbatches, groups)."
            )


def _logits_to_logprob_entropy(logits, batch, config, groups):
    """[b, s, V/TP] logits -> fp32 (logprob, entropy) [b, s] over the TP group."""
    return vocab_parallel_logprob_entropy(
        logits, batch.target, groups.tp, config.temperature, config.chunk_size, config.vocab_size
    )


def _step_token_mean(batch, selected, config, unit, groups):
    """all_tokens, selected_tokens: every micro-batch divides by the step's N (``unit``: N, or 1
    in per-token mode); its count is its normaliser tokens on this rank."""
    return unit, local_normalizer_count(batch.valid_mask, selected, config)


def _microbatch_selected_mean(batch, selected, config, unit, groups):
    """microbatch_selected_mean: N_m = |S_m| * unit / rows_m, |S_m| over the micro-batch's CP
    shards (``unit``: the step's rows R, or 1 in per-token mode); its count is rows_m, on CP
    rank 0 only (the other CP ranks hold the same rows)."""
    rows = microbatch_rows(batch)
    num_selected = (selected & batch.valid_mask).sum().to(torch.float64).reshape(1)
    num_selected = all_reduce_(num_selected, groups.cp)[0]
    count = torch.tensor(rows if group_rank(groups.cp) == 0 else 0, dtype=torch.int64)
    # A micro-batch of padding only (rows 0) has no valid token: its loss is 0 whatever N is.
    return num_selected * unit / max(rows, 1), count


# (batch, selected, config, unit, groups) -> (this micro-batch's N, its per-token-mode count)
_MICROBATCH_NORMALIZERS = {
    "all_tokens": _step_token_mean,
    "selected_tokens": _step_token_mean,
    "microbatch_selected_mean": _microbatch_selected_mean,
}


def forward_step_calling(loss_func, *loss_args) -> Callable:
    """A forward step that runs the model on the next micro-batch and hands its vocab-parallel
    logits to ``loss_func(batch, *loss_args, logits)`` (called by the schedule, last stage)."""

    def forward_step(data_iterator: Iterator[PolicyMicroBatch], model):
        batch = next(data_iterator)
        packed = {}  # packed: [1, t] with THD boundaries; attention stays within each sample
        if getattr(batch, "packed_seq_params", None) is not None:  # not on SFT's batches
            packed["packed_seq_params"] = batch.packed_seq_params
        logits = model(batch.tokens, batch.position_ids, None, labels=None, **packed)
        return logits, partial(loss_func, batch, *loss_args)

    return forward_step


def forking_loss_func(
    batch: PolicyMicroBatch,
    config: ForkingLossConfig,
    groups: LossGroups,
    scaling: StepLossScaling,
    logits: torch.Tensor,
):
    """Megatron loss function for one micro-batch (last pipeline stage)."""
    logprob, entropy = _logits_to_logprob_entropy(logits, batch, config, groups)
    scope_group = groups.scope_group(config.scope)
    selected = batch.selected
    if selected is None:
        if config.scope == "global_step":
            raise ValueError(
                "scope global_step needs the step's selection on every micro-batch "
                "(prepare_step sets it from the old-logprob pass); none was given."
            )
        selected = select_forking_tokens(
            entropy,
            batch.valid_mask,
            config.rho,
            config.strategy,
            scope_group,
            config.seed,
            batch.token_order,
        )
    unit = 1.0 if scaling.per_token else scaling.normalizer
    normalizer, local_count = _MICROBATCH_NORMALIZERS[config.normalizer](
        batch, selected, config, unit, groups
    )
    loss, metrics = forking_policy_loss(
        logprob,
        batch.old_logprob,
        batch.advantages,
        batch.valid_mask,
        entropy,
        config,
        groups.dp_cp,  # selection and normaliser are given: the group reduces the metrics
        selected=selected,
        normalizer=normalizer,
        ref_logprob=batch.ref_logprob,
        regularizer_normalizer=microbatch_regularizer_normalizer(
            batch, config, scaling, groups, normalizer
        ),
    )
    return megatron_loss_output(loss, local_count, metrics, scaling, groups)


def megatron_loss_output(loss, local_count, metrics, scaling: StepLossScaling, groups):
    """What a loss function hands Megatron's schedule under the step's contract (module
    docstring): ``loss`` is this rank's sum over the global normaliser (``normalizer`` of the
    scaling; 1 in per-token mode), ``local_count`` this rank's normaliser tokens."""
    # Summed over micro-batches, "loss" is the step's loss (per-token mode: before dividing by
    # the step's token count, which only finalize_model_grads knows).
    metrics["loss"] = all_reduce_(loss.detach().clone().reshape(1), groups.dp_cp)[0]
    if scaling.per_token:
        return loss, local_count.to(torch.int), metrics
    return loss * (scaling.num_microbatches * groups.dp_size), metrics


def make_forking_forward_step(
    config: ForkingLossConfig, groups: LossGroups, scaling: StepLossScaling
) -> Callable:
    """``forward_step_func(data_iterator, model)`` yielding logits and the forking loss.

    The iterator yields this rank's micro-batches already cut to its CP shard
    (``PolicyMicroBatch.context_parallel_shard``), so step-level selections and counts made
    from the same shards line up with them.
    """

    return forward_step_calling(forking_loss_func, config, groups, scaling)


def logprob_entropy_loss_func(batch, config, groups, logits):
    """Forward-only loss function: no loss, fp32 log-probs and entropies [b, s] per micro-batch."""
    with torch.no_grad():
        logprob, entropy = _logits_to_logprob_entropy(logits, batch, config, groups)
    return torch.zeros((), device=logits.device), {"logprob": logprob, "entropy": entropy}


def make_logprob_forward_step(config: ForkingLossConfig, groups: LossGroups) -> Callable:
    """``forward_step_func`` for the old-logprob pass (``forward_only=True``): the schedule
    returns, on the last pipeline stage, one {"logprob", "entropy"} dict per micro-batch."""

    return forward_step_calling(logprob_entropy_loss_func, config, groups)
