"""One policy-optimisation step of the actor: old-logprob pass, step selection, train pass.

The three functions are what the RL loop calls per rollout batch (``old_logprob_pass``) and per
optimizer step (``prepare_step`` then ``train_step``); each runs Megatron's real schedule for the
model's pipeline layout. Micro-batches are this rank's CP shards.
"""

import dataclasses
from dataclasses import dataclass

import torch
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_fork.forking.config import ForkingLossConfig
from megatron_fork.trainer.forward_step import (
    StepLossScaling,
    make_forking_forward_step,
    make_logprob_forward_step,
)
from megatron_fork.trainer.parallel_groups import LossGroups
from megatron_fork.trainer.policy_batch import PolicyMicroBatch
from megatron_fork.trainer.step_tokens import select_step_tokens, step_normalizer


@dataclass(frozen=True)
class LogprobEntropy:
    """[b, s] fp32 log-probs of the targets and entropies of one micro-batch shard."""

    logprob: torch.Tensor
    entropy: torch.Tensor


def _schedule_args(model, shards):
    return dict(
        model=[model],
        num_microbatches=len(shards),
        seq_length=shards[0].tokens.shape[1],
        micro_batch_size=shards[0].tokens.shape[0],
    )


def old_logprob_pass(
    model, shards: list[PolicyMicroBatch], config: ForkingLossConfig, groups: LossGroups
) -> list[LogprobEntropy] | None:
    """Forward-only pass: per micro-batch log-probs and entropies (last pipeline stage; None on
    other stages)."""
    outputs = get_forward_backward_func()(
        forward_step_func=make_logprob_forward_step(config, groups),
        data_iterator=iter(shards),
        forward_only=True,
        **_schedule_args(model, shards),
    )
    if not ps.is_pipeline_last_stage():
        return None
    return [LogprobEntropy(o["logprob"], o["entropy"]) for o in outputs]


def prepare_step(
    config: ForkingLossConfig,
    shards: list[PolicyMicroBatch],
    old_pass: list[LogprobEntropy] | None,
    groups: LossGroups,
    per_token: bool,
) -> tuple[list[PolicyMicroBatch], StepLossScaling]:
    """Step-level work before the train pass: the ``global_step`` selection (from the old pass's
    entropies, last stage) and the loss scaling with the step's global normaliser."""
    if config.scope == "global_step" and old_pass is not None:
        masks = select_step_tokens(config, shards, [o.entropy for o in old_pass], groups)
        shards = [dataclasses.replace(mb, selected=m) for mb, m in zip(shards, masks, strict=True)]
    normalizer = None if per_token else step_normalizer(config, shards, groups)
    return shards, StepLossScaling(per_token, len(shards), normalizer)


def forward_backward_step(
    model,
    shards: list[PolicyMicroBatch],
    config: ForkingLossConfig,
    groups: LossGroups,
    scaling: StepLossScaling,
) -> list[dict] | None:
    """Forward and backward of every micro-batch (gradients accumulate in the model); the
    per-micro-batch metric dicts on the last stage, None elsewhere."""
    outputs = get_forward_backward_func()(
        forward_step_func=make_forking_forward_step(config, groups, scaling),
        data_iterator=iter(shards),
        forward_only=False,
        **_schedule_args(model, shards),
    )
    return outputs if ps.is_pipeline_last_stage() else None
