"""The training half of an RL step, on every rank: the step's samples -> mini-batches (this
rank's DP slice, micro-batches, CP shards) -> one old-logprob pass over all of them (the policy
that generated them) -> one optimizer step per mini-batch with the forking-token loss.
"""

import dataclasses
import math

import torch
from megatron.core import parallel_state as ps
from megatron.core.utils import get_model_config

from megatron_fork.forking.config import ForkingLossConfig
from megatron_fork.parallel.groups import all_reduce_
from megatron_fork.rl.rollout_scatter import RolloutSlice
from megatron_fork.rl.slice_microbatches import packed_microbatch, padded_microbatch
from megatron_fork.rl.step_metrics import combine_microbatch_metrics
from megatron_fork.rollout.types import Sample
from megatron_fork.trainer.actor import Actor, device, optimizer_step, zero_grads
from megatron_fork.trainer.actor_step import (
    forward_backward_step,
    old_logprob_pass,
    prepare_step,
)
from megatron_fork.trainer.packing import packing_layout
from megatron_fork.trainer.parallel_groups import LossGroups
from megatron_fork.trainer.policy_batch import PolicyMicroBatch, moved_to

SEQ_LEN_MULTIPLE = 8


FP8_ROWS_MULTIPLE = {"blockwise": 128, "mxfp8": 32}
"""Local rows an FP8 GEMM input must divide by, per TE recipe (16 for the others): TE asserts
FP8 inputs' dimensions divide by 8/16; blockwise scaling works on 128-row tiles (conservative);
MXFP8 on 1x32 blocks (Megatron's ``get_fp8_align_size``: 32)."""


def layout_row_multiple(
    context_parallel: int, tensor_parallel: int, sequence_parallel: bool, fp8_recipe: str | None
) -> int:
    """What every row length must divide by at a layout: 8; 2 x CP (Megatron's load-balanced CP
    split); TP x CP with sequence parallelism (each CP rank's s / CP tokens are scattered over
    TP); with FP8 (``fp8_recipe`` not None) the local rows of a GEMM input (s / CP, and / TP
    with sequence parallelism) times TE's FP8 row multiple."""
    cp = context_parallel
    tp = tensor_parallel if sequence_parallel else 1
    multiple = math.lcm(SEQ_LEN_MULTIPLE, 2 * cp) if cp > 1 else SEQ_LEN_MULTIPLE
    multiple = math.lcm(multiple, tp * cp)
    if fp8_recipe is not None:
        multiple = math.lcm(multiple, FP8_ROWS_MULTIPLE.get(fp8_recipe, 16) * tp * cp)
    return multiple


def row_multiple(config) -> int:
    """``layout_row_multiple`` of a built model's ``TransformerConfig``."""
    return layout_row_multiple(
        config.context_parallel_size,
        config.tensor_model_parallel_size,
        config.sequence_parallel,
        config.fp8_recipe if config.fp8 else None,
    )


def row_length(longest_sequence: int, multiple: int = SEQ_LEN_MULTIPLE) -> int:
    """Length of next-token rows for sequences of up to ``longest_sequence`` tokens (one less),
    rounded up to ``multiple`` (``row_multiple``)."""
    return math.ceil((longest_sequence - 1) / multiple) * multiple


def step_seq_len(samples: list[Sample], multiple: int) -> int:
    """Row length of the step: its longest prompt + response (``row_length``)."""
    return row_length(max(len(s.prompt_ids) + len(s.output_ids) for s in samples), multiple)


def check_batch_layout(
    num_samples: int, num_mini_batches: int, micro_batch_size: int, dp_size: int
) -> None:
    """Every mini-batch must split into ``dp_size`` slices of whole micro-batches (checked at
    start-up, before any rollout is spent)."""
    per_mini = num_samples // num_mini_batches
    if (
        num_samples % num_mini_batches
        or per_mini % dp_size
        or (per_mini // dp_size) % (micro_batch_size)
    ):
        raise ValueError(
            f"{num_samples} samples per step in {num_mini_batches} mini-batches must split into "
            f"{dp_size} data-parallel slices of whole micro-batches of {micro_batch_size}: "
            "adjust micro_batch_size, mini_batches_per_step or the rollout sizes"
        )


def slice_mini_batches(
    rollout: RolloutSlice, packing: bool, multiple: int, groups: LossGroups, pad_id: int
) -> list[list[PolicyMicroBatch] | None]:
    """Per mini-batch, this rank's micro-batch CP shards on its device (None for a mini-batch
    that takes no optimizer step), laid out as ``rollout``'s layout says: packed sequences
    (``packing``) or rows of the step's longest sample, rounded up to ``multiple``
    (``row_multiple``)."""
    # Built on the host (many small reads: on a GPU each a sync), each micro-batch moved once.
    rollout = moved_to(rollout, torch.device("cpu"))
    stride = row_length(max(rollout.step_max_tokens, 2), multiple)
    layout = packing_layout(groups.cp_size, multiple)
    out = []
    for members, trained in zip(rollout.microbatch_members(), rollout.trained, strict=True):
        if not trained:
            out.append(None)
            continue
        if packing:
            micro = [packed_microbatch(rollout, k, layout, stride, pad_id) for k in members]
        else:
            micro = [padded_microbatch(rollout, k, stride, pad_id) for k in members]
        out.append([moved_to(mb.context_parallel_shard(groups.cp), device()) for mb in micro])
    return out


def _with_pass_logprobs(shards, old_pass, ref_pass):
    """The trainer's own old log-probs in place of the engine's, and the reference policy's
    (last stage; the other stages keep theirs, which no loss reads)."""
    if old_pass is None:
        return shards
    refs = [None] * len(shards) if ref_pass is None else [r.logprob for r in ref_pass]
    return [
        dataclasses.replace(mb, old_logprob=o.logprob, ref_logprob=ref)
        for mb, o, ref in zip(shards, old_pass, refs, strict=True)
    ]


def _engine_mismatch(mini_batches, old_passes, dp_cp_group) -> float:
    """Mean |trainer - engine| log-prob over the step's valid tokens (all DP x CP ranks; last
    stage): the engine got the trainer's weights, so the two should agree closely."""
    total = torch.zeros(2, dtype=torch.float64, device=device())
    for shards, old_pass in zip(mini_batches, old_passes, strict=True):
        for mb, o in zip(shards, old_pass, strict=True):
            total[0] += (o.logprob - mb.old_logprob).abs()[mb.valid_mask].sum().double()
            total[1] += mb.valid_mask.sum()
    all_reduce_(total, dp_cp_group)
    return float(total[0] / total[1].clamp(min=1))


def train_on_slice(
    actor: Actor,
    loss_config: ForkingLossConfig,
    groups: LossGroups,
    rollout: RolloutSlice,
    packing: bool,
    pad_id: int,
    first_optimizer_step: int,
    reference_model=None,
) -> dict | None:
    """Old-logprob pass (and the reference model's, for the KL term) over this rank's slice,
    then one optimizer step per trained mini-batch. Returns the step's metrics on the last
    pipeline stage (None elsewhere). A mini-batch of filler samples only is skipped: no
    forward, no optimizer step (Adam's momentum would still move the weights)."""
    multiple = row_multiple(get_model_config(actor.model))
    mini_batches = slice_mini_batches(rollout, packing, multiple, groups, pad_id)
    trained = [mb for mb in mini_batches if mb is not None]
    old_passes = [old_logprob_pass(actor.model, mb, loss_config, groups) for mb in trained]
    ref_passes = [
        old_logprob_pass(reference_model, mb, loss_config, groups) if reference_model else None
        for mb in trained
    ]
    outputs, optim = [], []
    steps = [m for m, mb in enumerate(mini_batches) if mb is not None]
    for m, shards, old, ref in zip(steps, trained, old_passes, ref_passes, strict=True):
        shards = _with_pass_logprobs(shards, old, ref)
        prepared = prepare_step(
            actor.model, loss_config, shards, old, groups, first_optimizer_step + m
        )
        zero_grads(actor)
        outputs.extend(forward_backward_step(actor.model, prepared, groups) or [])
        optim.append(optimizer_step(actor))
    if not ps.is_pipeline_last_stage():
        return None
    mismatch = _engine_mismatch(trained, old_passes, groups.dp_cp)
    metrics = {"train/skipped_mini_batches": float(len(mini_batches) - len(trained))}
    if optim:
        metrics.update(combine_microbatch_metrics(outputs, "train/", len(optim)))
        for key in optim[0]:
            metrics[key] = sum(o[key] for o in optim) / len(optim)
    metrics["train/engine_logprob_abs_diff"] = mismatch
    return metrics
