"""Log-prob of the target token and entropy of the distribution, from vocab-parallel logits.

For logits z split over TP ranks along the vocabulary ([..., V/TP] per rank) and p = softmax(z/T):
    logprob_t = log p_t[target_t]            entropy_t = -sum_j p_tj log p_tj
both fp32, with gradients for both outputs. Communication is one MAX all-reduce (row maxima) and
one SUM all-reduce (per-row partial sums) over the TP group for the whole input, whatever the
chunking; the full vocabulary is never gathered. Work runs over chunks of tokens, so the extra
memory is two fp32 [chunk, V/TP] buffers, not [tokens, V/TP]. The input is never modified.
Logits must be finite: a -inf entry (a masked vocabulary slot) makes the entropy NaN, which the
token selection then reports.

Gradients (per row, w.r.t. z/T):  d logprob/dz_j = 1[j = target] - p_j
                                 d entropy/dz_j = -p_j (log p_j + entropy)
The backward recomputes p chunk by chunk from saved row statistics and needs no communication.
"""

import torch
import torch.distributed as dist

from megatron_fork.parallel.groups import all_reduce_, group_rank

DEFAULT_CHUNK_SIZE = 512
"""Tokens per chunk: 512 x V/TP fp32 is 64 MiB at V/TP = 32768 (Qwen3's 151936 at TP=4: 74 MiB)."""

# Columns of the per-row partial sums that one SUM all-reduce combines across TP ranks.
_SUM_EXP, _SUM_EXP_Z, _TARGET_Z, _TARGET_FOUND = range(4)


def _row_chunks(num_rows: int, chunk_size: int):
    for start in range(0, num_rows, chunk_size):
        yield slice(start, min(start + chunk_size, num_rows))


def _shifted_logits(logits, row_shift, temperature, out=None):
    """fp32 logits / T - row_shift[:, None] in one pass: [chunk, V/TP], written to ``out`` (an
    fp32 buffer) if given, else to a new tensor; ``logits`` is untouched."""
    neg_shift = row_shift.neg().unsqueeze(-1)  # [c, 1]
    if out is None:
        out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    return torch.add(neg_shift, logits, alpha=1.0 / temperature, out=out)


def _local_target(target: torch.Tensor, vocab_start: int, vocab_local: int):
    """Index of each target inside this rank's vocab shard (0 if absent) and whether present."""
    local = target - vocab_start  # [N]
    found = (local >= 0) & (local < vocab_local)  # [N]
    return torch.where(found, local, torch.zeros_like(local)), found


class _VocabParallelLogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, tp_group, temperature, chunk_size, vocab_size):
        rows, vocab_local = logits.shape  # [N, V/TP]
        vocab_start = group_rank(tp_group) * vocab_local
        # Columns at or past the true vocabulary size (TP padding) take no part at all.
        width = (
            vocab_local
            if vocab_size is None
            else min(max(vocab_size - vocab_start, 0), vocab_local)
        )
        real = logits[:, :width]  # [N, width], a view
        target_local, found = _local_target(target, vocab_start, width)

        # Row maxima over the full vocabulary: local max per chunk, then one MAX all-reduce.
        row_max = torch.full((rows,), float("-inf"), device=logits.device)  # [N]
        for rows_c in _row_chunks(rows, chunk_size) if width else ():
            row_max[rows_c] = real[rows_c].amax(dim=-1).to(torch.float32)
        row_max.div_(temperature)
        all_reduce_(row_max, tp_group, op=dist.ReduceOp.MAX)

        # Per-row partial sums on this shard, combined by one SUM all-reduce.
        partial = torch.zeros(rows, 4, dtype=torch.float32, device=logits.device)  # [N, 4]
        for rows_c in _row_chunks(rows, chunk_size) if width else ():
            z = _shifted_logits(real[rows_c], row_max[rows_c], temperature)  # [c, width]
            partial[rows_c, _TARGET_Z] = z.gather(-1, target_local[rows_c, None]).squeeze(-1)
            exp_z = z.exp()
            partial[rows_c, _SUM_EXP] = exp_z.sum(dim=-1)
            # exp(z) * z summed by torch's cascade sum: a BLAS dot here loses ~1e-5 relative
            # accuracy on low-entropy rows, where log(sum) and this term nearly cancel.
            partial[rows_c, _SUM_EXP_Z] = exp_z.mul_(z).sum(dim=-1)
            del z, exp_z  # free this chunk's buffers before the next one is allocated
        partial[:, _TARGET_Z] *= found
        partial[:, _TARGET_FOUND] = found.to(torch.float32)
        all_reduce_(partial, tp_group)

        log_sum_exp = partial[:, _SUM_EXP].log()  # [N], of the shifted logits
        entropy = log_sum_exp - partial[:, _SUM_EXP_Z] / partial[:, _SUM_EXP]
        has_target = partial[:, _TARGET_FOUND] > 0
        logprob = torch.where(has_target, partial[:, _TARGET_Z] - log_sum_exp, 0.0)

        ctx.save_for_backward(
            logits, target_local, found, has_target, row_max + log_sum_exp, entropy
        )
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.width = width
        ctx.mark_non_differentiable(target)
        return logprob, entropy

    @staticmethod
    def backward(ctx, grad_logprob, grad_entropy):
        logits, target_local, found, has_target, row_lse, entropy = ctx.saved_tensors
        temperature = ctx.temperature
        # A row whose target is in no shard has logprob fixed at 0: no gradient through it.
        grad_logprob = grad_logprob.to(torch.float32) * has_target  # [N]
        grad_entropy = grad_entropy.to(torch.float32)  # [N]
        grad_logits = torch.empty_like(logits)  # [N, V/TP]
        width = ctx.width
        grad_logits[:, width:] = 0  # padded vocabulary columns
        real, grad_real = logits[:, :width], grad_logits[:, :width]
        in_place = logits.dtype == torch.float32  # work inside grad_logits: no chunk copy
        for rows_c in _row_chunks(logits.shape[0], ctx.chunk_size) if width else ():
            out = grad_real[rows_c] if in_place else None
            log_p = _shifted_logits(real[rows_c], row_lse[rows_c], temperature, out)  # [c, w]
            p = log_p.exp()
            # -p * (g_H * log p + g_lp + g_H * H), built in log_p's buffer in two passes.
            g_h = grad_entropy[rows_c, None]  # [c, 1]
            offset = grad_logprob[rows_c, None] + g_h * entropy[rows_c, None]  # [c, 1]
            grad = torch.addcmul(offset.neg(), log_p, g_h.neg(), out=log_p).mul_(p)
            del p
            # + g_lp at the target, on the rank whose shard holds it: a scatter over every row
            # (rows without their target here add 0 at column 0), so no host sync for indices.
            at_target = (grad_logprob[rows_c] * found[rows_c]).unsqueeze(-1)  # [c, 1]
            grad.scatter_add_(-1, target_local[rows_c, None], at_target)
            if temperature != 1.0:
                grad.div_(temperature)
            if not in_place:
                grad_real[rows_c] = grad
            del log_p, grad
        return grad_logits, None, None, None, None, None


def _check_inputs(logits, target, temperature, chunk_size, vocab_size):
    if logits.dim() < 1 or logits.shape[:-1] != target.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be [..., V/TP] over target {tuple(target.shape)}: "
            "the leading dimensions must match."
        )
    if logits.device != target.device:
        raise ValueError(f"logits on {logits.device} but target on {target.device}: move both.")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}.")
    if target.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"target must hold integer token ids, got {target.dtype}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}.")
    if vocab_size is not None and vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1 or None, got {vocab_size}.")


def vocab_parallel_logprob_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    tp_group=None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (logprob of ``target``, entropy) per token from vocab-parallel ``logits``.

    Args:
        logits: [..., V/TP] this rank's vocabulary shard (rank r holds ids [r*V/TP, (r+1)*V/TP)).
        target: [...] global token ids. An id outside [0, V) gets logprob 0 and no gradient
            through logprob (use it for ignored positions).
        tp_group: the tensor-parallel group the vocabulary is split over; None = not split.
        temperature: p = softmax(logits / temperature).
        chunk_size: tokens per chunk (bounds the extra memory); None = ``DEFAULT_CHUNK_SIZE``.
        vocab_size: the true vocabulary size when the logits are padded past it (Megatron pads
            the vocabulary to a multiple of TP x 128): padded columns are left out of the
            softmax and get zero gradient. None = every column is a real token.
    Returns:
        (logprob [...], entropy [...]), fp32, identical on every TP rank.
    """
    _check_inputs(logits, target, temperature, chunk_size, vocab_size)
    lead_shape = target.shape
    flat_logits = logits.reshape(-1, logits.shape[-1])  # [N, V/TP]
    flat_target = target.reshape(-1).to(torch.int64)  # [N]
    logprob, entropy = _VocabParallelLogprobEntropy.apply(
        flat_logits,
        flat_target,
        tp_group,
        float(temperature),
        chunk_size or DEFAULT_CHUNK_SIZE,
        vocab_size,
    )
    return logprob.view(lead_shape), entropy.view(lead_shape)
