"""One policy-optimisation step of the actor: old-logprob pass, step selection, train pass.

The RL loop calls ``old_logprob_pass`` per rollout batch, then per optimizer step
``prepare_step`` and ``forward_backward_step`` (and the optimizer); each runs Megatron's real
schedule for the model's pipeline layout. Micro-batches are this rank's CP shards.
"""

import dataclasses
from dataclasses import dataclass

import torch
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_model_config

from megatron_fork.forking.config import ForkingLossConfig
from megatron_fork.trainer.forward_step import (
    StepLossScaling,
    make_forking_forward_step,
    make_logprob_forward_step,
)
from megatron_fork.trainer.parallel_groups import LossGroups
from megatron_fork.trainer.policy_batch import PolicyMicroBatch
from megatron_fork.trainer.regularizer_scaling import step_regularizer_normalizer
from megatron_fork.trainer.schedule import schedule_args
from megatron_fork.trainer.step_tokens import select_step_tokens, step_normalizer


@dataclass(frozen=True)
class LogprobEntropy:
    """[b, s] fp32 log-probs of the targets and entropies of one micro-batch shard."""

    logprob: torch.Tensor
    entropy: torch.Tensor


@dataclass(frozen=True)
class PreparedStep:
    """Everything the train pass of one optimizer step needs, fixed before it starts."""

    shards: list[PolicyMicroBatch]
    """This rank's micro-batch CP shards (with the step's selection under ``global_step``)."""
    config: ForkingLossConfig
    """The loss config of this step: the random strategy's seed is mixed with the step index,
    so the equal-count control draws a fresh set of positions every step."""
    scaling: StepLossScaling


def step_seed(seed: int, step_index: int) -> int:
    """A 32-bit seed for (run seed, step index)."""
    return (seed * 0x9E3779B1 + step_index) % 2**32


def old_logprob_pass(
    model, shards: list[PolicyMicroBatch], config: ForkingLossConfig, groups: LossGroups
) -> list[LogprobEntropy] | None:
    """Forward-only pass: per micro-batch log-probs and entropies (last pipeline stage; None on
    other stages). Runs without autograd: Megatron's schedule does not turn it off for
    ``forward_only``, and with it on every layer keeps its activations for a backward that
    never comes (a training micro-batch's peak memory; ``tools/bench_old_pass_memory.py``)."""
    with torch.no_grad():
        return logprob_schedule(model, shards, config, groups)


def logprob_schedule(
    model, shards: list[PolicyMicroBatch], config: ForkingLossConfig, groups: LossGroups
) -> list[LogprobEntropy] | None:
    """The old pass's schedule under the caller's autograd mode (``old_logprob_pass`` is this
    without grad; the benchmark measures both)."""
    outputs = get_forward_backward_func()(
        forward_step_func=make_logprob_forward_step(config, groups),
        data_iterator=iter(shards),
        forward_only=True,
        **schedule_args(model, shards, groups),
    )
    if not ps.is_pipeline_last_stage():
        return None
    return [LogprobEntropy(o["logprob"], o["entropy"]) for o in outputs]


def prepare_step(
    model,
    config: ForkingLossConfig,
    shards: list[PolicyMicroBatch],
    old_pass: list[LogprobEntropy] | None,
    groups: LossGroups,
    step_index: int = 0,
) -> PreparedStep:
    """Step-level work before the train pass: the ``global_step`` selection (from the old
    pass's entropies, on the last stage) and the loss scaling, which follows the model's
    ``calculate_per_token_loss`` (so the loss and Megatron's schedule/DDP never disagree)."""
    config = dataclasses.replace(config, seed=step_seed(config.seed, step_index))
    if config.scope == "global_step" and ps.is_pipeline_last_stage():
        if old_pass is None:
            raise ValueError(
                "scope global_step selects from the old-logprob pass: pass its outputs "
                "(old_logprob_pass) to prepare_step."
            )
        masks = select_step_tokens(config, shards, [o.entropy for o in old_pass], groups)
        shards = [dataclasses.replace(mb, selected=m) for mb, m in zip(shards, masks, strict=True)]
    per_token = get_model_config(model).calculate_per_token_loss
    normalizer = None if per_token else step_normalizer(config, shards, groups)
    regularizer = step_regularizer_normalizer(config, shards, groups, per_token)
    scaling = StepLossScaling(per_token, len(shards), normalizer, regularizer)
    return PreparedStep(shards, config, scaling)


def forward_backward_step(model, step: PreparedStep, groups: LossGroups) -> list[dict] | None:
    """Forward and backward of every micro-batch (gradients accumulate in the model); the
    per-micro-batch metric dicts on the last stage, None elsewhere."""
    outputs = get_forward_backward_func()(
        forward_step_func=make_forking_forward_step(step.config, groups, step.scaling),
        data_iterator=iter(step.shards),
        forward_only=False,
        **schedule_args(model, step.shards, groups),
    )
    return outputs if ps.is_pipeline_last_stage() else None
