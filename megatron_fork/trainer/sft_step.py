"""Supervised (cross-entropy) steps with the same Megatron plumbing as the policy loss: the
warm start that turns a random model into the run's "base model".

Token-mean negative log-likelihood over the loss-mask tokens of the whole optimizer step
(all micro-batches, DP and CP), computed from vocab-parallel logits by the same op, under either
of Megatron's loss contracts (``forward_step.megatron_loss_output``).
"""

from dataclasses import dataclass

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_model_config

from megatron_fork.ops import vocab_parallel_logprob_entropy
from megatron_fork.parallel.groups import all_reduce_
from megatron_fork.trainer.forward_step import (
    StepLossScaling,
    forward_step_calling,
    megatron_loss_output,
)
from megatron_fork.trainer.parallel_groups import LossGroups
from megatron_fork.trainer.policy_batch import next_token_row
from megatron_fork.trainer.schedule import schedule_args


@dataclass(frozen=True)
class SFTMicroBatch:
    """[b, s] tensors of one supervised micro-batch (or its CP shard)."""

    tokens: torch.Tensor
    position_ids: torch.Tensor
    target: torch.Tensor
    """Next-token ids (``tokens`` shifted left)."""
    loss_mask: torch.Tensor
    """bool: the target tokens that are trained on (the solution, not the prompt/padding)."""

    def __post_init__(self):
        for name in ("position_ids", "target", "loss_mask"):
            if getattr(self, name).shape != self.tokens.shape:
                raise ValueError(
                    f"SFTMicroBatch.{name} is {tuple(getattr(self, name).shape)} but tokens are "
                    f"{tuple(self.tokens.shape)}."
                )
        if self.loss_mask.dtype != torch.bool:
            raise TypeError(f"SFTMicroBatch.loss_mask must be bool, got {self.loss_mask.dtype}.")


def sft_loss_func(batch, groups, scaling, vocab_size, logits):
    """Megatron loss function: this rank's NLL sum over the step's global token count."""
    logprob, _ = vocab_parallel_logprob_entropy(
        logits, batch.target, groups.tp, vocab_size=vocab_size
    )
    nll_sum = -torch.where(batch.loss_mask, logprob, 0.0).sum()
    normalizer = 1.0 if scaling.per_token else float(scaling.normalizer)
    loss = nll_sum / max(normalizer, 1.0)
    metrics = {"num_tokens": all_reduce_(batch.loss_mask.sum().reshape(1), groups.dp_cp)[0]}
    return megatron_loss_output(loss, batch.loss_mask.sum(), metrics, scaling, groups)


def sft_forward_backward_step(
    model, shards: list[SFTMicroBatch], groups: LossGroups, vocab_size: int | None = None
) -> list[dict]:
    """Forward and backward of one SFT optimizer step over this rank's micro-batch shards;
    the per-micro-batch metric dicts ("loss" sums to the step's mean NLL) on the last stage."""
    per_token = get_model_config(model).calculate_per_token_loss
    count = torch.stack([mb.loss_mask.sum() for mb in shards]).sum().reshape(1)
    normalizer = None if per_token else all_reduce_(count.to(torch.float64), groups.dp_cp)[0]
    scaling = StepLossScaling(per_token, len(shards), normalizer)
    return get_forward_backward_func()(
        forward_step_func=forward_step_calling(sft_loss_func, groups, scaling, vocab_size),
        data_iterator=iter(shards),
        forward_only=False,
        **schedule_args(model, shards, groups),
    )


def sft_microbatch(
    pairs: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int
) -> SFTMicroBatch:
    """Right-padded [b, seq_len] micro-batch from (prompt ids, completion ids) pairs; the loss
    covers the completion's tokens (each predicted from the tokens before it)."""
    rows = [
        next_token_row(prompt, completion, seq_len, pad_id, f"example {i}")
        for i, (prompt, completion) in enumerate(pairs)
    ]
    tokens = torch.stack([ids for ids, _ in rows])  # [b, seq_len + 1]
    return SFTMicroBatch(
        tokens=tokens[:, :-1],
        position_ids=torch.arange(seq_len).expand(len(rows), seq_len),
        target=tokens[:, 1:],
        loss_mask=torch.stack([mask for _, mask in rows]),
    )
