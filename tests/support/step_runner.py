"""One optimizer step's forward and backward with the forking-token loss, on this rank.

Runs the actor's step (megatron_fork.trainer.actor_step) through Megatron's real schedule: the
old-logprob pass, the selection for the configured scope, the step normaliser, and the training
pass. Asserts that the selection for the scope, made from the old pass's entropies on this
layout, equals the reference's on every micro-batch.
"""

import torch
from megatron.core import parallel_state as ps

from megatron_fork.forking.selection import select_forking_tokens
from megatron_fork.trainer.actor_step import (
    PreparedStep,
    forward_backward_step,
    old_logprob_pass,
    prepare_step,
)
from megatron_fork.trainer.parallel_groups import LossGroups
from megatron_fork.trainer.policy_batch import PolicyMicroBatch, context_parallel_slice
from tests.support.step_data import sample_rows


def _microbatches(step, ref, tokens, num_microbatches, micro_batch_size, groups):
    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    seq_len = step["target"].shape[1]
    shards = []
    for m in range(num_microbatches):
        rows = sample_rows(step, m, dp_rank, dp, micro_batch_size)
        full = PolicyMicroBatch(
            tokens=tokens[rows],
            position_ids=torch.arange(seq_len).expand(len(rows), seq_len),
            target=step["target"][rows],
            valid_mask=step["valid"][rows],
            old_logprob=ref["old_logprob"][rows],
            advantages=step["advantages"][rows].float(),
            token_order=step["order"][rows],
            ref_logprob=ref["ref_logprob"][rows],
        )
        shards.append(full.context_parallel_shard(groups.cp))
    return shards


def _selection_used(step: PreparedStep, entropies, groups):
    """The masks the loss uses: the step's own (global_step) or the scope's, made the way
    forking_loss_func makes them, with this step's config."""
    if step.config.scope == "global_step":
        return [mb.selected for mb in step.shards]
    cfg, scope_group = step.config, groups.scope_group(step.config.scope)
    return [
        select_forking_tokens(
            h, mb.valid_mask, cfg.rho, cfg.strategy, scope_group, cfg.seed, mb.token_order
        )
        for h, mb in zip(entropies, step.shards, strict=True)
    ]


def _check_selection(masks, step, ref, micro_batch_size, groups):
    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    for m, mask in enumerate(masks):
        rows = sample_rows(step, m, dp_rank, dp, micro_batch_size)
        expected = context_parallel_slice(ref["selected"][rows], groups.cp)
        assert torch.equal(mask, expected), f"micro-batch {m}: selected tokens differ"


def run_forking_step(model, cfg, step, ref, tokens, num_microbatches, micro_batch_size, per_token):
    """Forward+backward of one step; returns the step's loss on the last stage, else None."""
    groups = LossGroups.from_parallel_state()
    shards = _microbatches(step, ref, tokens, num_microbatches, micro_batch_size, groups)
    old_pass = old_logprob_pass(model, shards, cfg, groups)
    prepared = prepare_step(model, cfg, shards, old_pass, groups)
    assert prepared.scaling.per_token == per_token
    if old_pass is not None:
        masks = _selection_used(prepared, [o.entropy for o in old_pass], groups)
        _check_selection(masks, step, ref, micro_batch_size, groups)
    outputs = forward_backward_step(model, prepared, groups)
    if outputs is None:
        return None
    selected = sum(float(o["num_selected_tokens"]) for o in outputs)
    assert selected == float(ref["selected"].sum()), "the loss used another number of tokens"
    loss = sum(o["loss"] for o in outputs)
    return loss / ref["normalizer"] if per_token else loss
