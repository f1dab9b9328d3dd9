"""Rollout samples -> the trainer's micro-batches: token layout, response mask, rollout
log-probs and advantages aligned with the next-token targets.

A sample of prompt p (P ids) and response r (R ids) becomes one row: inputs = (p + r)[:-1],
targets = (p + r)[1:], so position t predicts target t; the response's tokens are the targets
at positions P - 1 .. P + R - 2, which are the valid (trained) positions. Rows are right-padded
to ``seq_len``. The order of a token (for ties and the random strategy) is
``sample_index * seq_len + position``, with the caller's step-wide sample index.
"""

import torch

from megatron_fork.rollout.types import Sample
from megatron_fork.trainer.policy_batch import (
    PolicyMicroBatch,
    canonical_token_order,
    next_token_row,
)


def _row(sample: Sample, seq_len: int, pad_id: int):
    if len(sample.output_logprobs) != len(sample.output_ids):
        raise ValueError(
            f"sample {sample.request_id!r}: {len(sample.output_logprobs)} log-probs for "
            f"{len(sample.output_ids)} generated tokens"
        )
    tokens, valid = next_token_row(
        sample.prompt_ids, sample.output_ids, seq_len, pad_id, f"sample {sample.request_id!r}"
    )
    logprob = torch.zeros(seq_len)
    logprob[valid] = torch.tensor(sample.output_logprobs, dtype=torch.float32)
    return tokens, valid, logprob


def samples_to_microbatches(
    samples: list[Sample],
    advantages: torch.Tensor,
    sample_indices: list[int],
    seq_len: int,
    micro_batch_size: int,
    pad_id: int = 0,
    trainable: list[bool] | None = None,
) -> list[PolicyMicroBatch]:
    """Micro-batches of ``micro_batch_size`` rows (the last may be smaller), in sample order.

    Args:
        samples: this rank's samples.
        advantages: [n] one advantage per sample (broadcast over its response tokens).
        sample_indices: each sample's index within the whole optimizer step (all DP ranks), for
            the canonical token order.
        seq_len: row length; a sample longer than ``seq_len + 1`` tokens raises.
        trainable: per sample, False for a row that only fills the batch (no valid tokens:
            outside the selection, the normaliser and the gradient). None = all trainable.
    ``old_logprob`` holds the rollout engine's log-probs; the trainer's old-logprob pass may
    replace them with its own recomputation.
    """
    if not len(samples) == len(advantages) == len(sample_indices):
        raise ValueError(
            f"{len(samples)} samples, {len(advantages)} advantages and {len(sample_indices)} "
            "sample indices must match"
        )
    rows = [_row(s, seq_len, pad_id) for s in samples]
    if trainable is not None:
        rows = [(t, v & keep, lp) for (t, v, lp), keep in zip(rows, trainable, strict=True)]
    microbatches = []
    for start in range(0, len(rows), micro_batch_size):
        chunk = slice(start, start + micro_batch_size)
        tokens, valid, logprob = (torch.stack(column) for column in zip(*rows[chunk], strict=True))
        b = tokens.shape[0]
        adv = advantages[chunk].to(torch.float32)[:, None]  # [b, 1]
        microbatches.append(
            PolicyMicroBatch(
                tokens=tokens[:, :-1],
                position_ids=torch.arange(seq_len).expand(b, seq_len),
                target=tokens[:, 1:],
                valid_mask=valid,
                old_logprob=logprob,
                advantages=torch.where(valid, adv, 0.0),
                token_order=canonical_token_order(torch.tensor(sample_indices[chunk]), seq_len),
            )
        )
    return microbatches
