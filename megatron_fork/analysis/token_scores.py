"""Per-token log-prob and entropy of given responses, teacher-forced through the trainer's own
path: samples -> the trainer's micro-batches -> Megatron's forward-only schedule -> the
vocab-parallel log-prob/entropy op (any TP/PP; padding of the vocabulary left out)."""

import torch
from megatron.core.utils import get_model_config

from megatron_fork.forking import ForkingLossConfig
from megatron_fork.rl.rollout_batch import samples_to_microbatches
from megatron_fork.rl.train_batch import row_multiple, step_seq_len
from megatron_fork.rollout.types import Sample
from megatron_fork.trainer.actor_step import old_logprob_pass


def score_samples(
    model,
    samples: list[Sample],
    vocab_size: int,
    groups,
    micro_batch_size: int = 16,
    pad_id: int = 0,
    temperature: float = 1.0,
) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """(log-prob [R], entropy [R]) of each sample's R response tokens, on the last pipeline
    stage (None elsewhere). Every rank of the model calls it."""
    if not samples:
        return []
    shards = samples_to_microbatches(
        samples,
        torch.zeros(len(samples)),
        list(range(len(samples))),
        step_seq_len(samples, row_multiple(get_model_config(model))),
        micro_batch_size,
        pad_id,
    )
    config = ForkingLossConfig(vocab_size=vocab_size, temperature=temperature)
    outputs = old_logprob_pass(model, shards, config, groups)
    if outputs is None:
        return None
    scores = []
    for shard, output in zip(shards, outputs, strict=True):
        for row in range(shard.valid_mask.shape[0]):
            valid = shard.valid_mask[row]
            scores.append((output.logprob[row][valid], output.entropy[row][valid]))
    return scores
