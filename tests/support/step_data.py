"""A synthetic optimizer step: G sequences of S tokens with prompts, responses and padding.

Sample g sits in micro-batch m on data-parallel rank d at row j with g = (m * DP + d) * b + j,
and its tokens have canonical order g * S + s. That layout is fixed here so that a parallel run
and the single-process reference agree on which token is which.
"""

import torch


def make_step(num_samples: int, seq_len: int, vocab: int, seed: int = 0) -> dict:
    """Tensors of one step; logits [G*S, V] are the 'model' of the lookup tests."""
    gen = torch.Generator().manual_seed(seed)
    g, s = num_samples, seq_len
    logits = torch.randn(g * s, vocab, generator=gen, dtype=torch.float64) * 2.0
    tokens = torch.randint(0, vocab, (g, s), generator=gen)
    target = torch.randint(0, vocab, (g, s), generator=gen)
    prompt_len = torch.randint(1, s // 2, (g,), generator=gen)
    response_len = torch.randint(0, s, (g,), generator=gen)
    response_len[1] = 0  # a sequence with no response token at all
    position = torch.arange(s)
    valid = (position >= prompt_len[:, None]) & (position < (prompt_len + response_len)[:, None])
    order = torch.arange(g * s).view(g, s)
    # Per-sequence advantages of both signs, offset from zero mean: with GRPO's zero-mean
    # advantages the loss near ratio 1 is a cancelling sum, whose relative error says nothing
    # about the implementation (it is set by fp32 log-prob rounding). The tests check the loss
    # is well away from zero before comparing it.
    advantages = 0.5 + torch.randn(g, generator=gen, dtype=torch.float64)[:, None].expand(g, s)
    noise = 0.3 * torch.randn(g, s, generator=gen, dtype=torch.float64)
    return {
        "logits": logits,
        "tokens": tokens,
        "target": target,
        "valid": valid,
        "order": order,
        "advantages": advantages,
        "old_noise": noise,
        "ref_noise": 0.2 * torch.randn(g, s, generator=gen, dtype=torch.float64),
    }


def sample_rows(step: dict, microbatch: int, dp_rank: int, dp_size: int, micro_batch_size: int):
    """Sample indices of micro-batch ``microbatch`` on data-parallel rank ``dp_rank``."""
    first = (microbatch * dp_size + dp_rank) * micro_batch_size
    return torch.arange(first, first + micro_batch_size)


def scope_units(num_samples, num_microbatches, dp_size, scope):
    """Groups of sample indices that share one selection, per scope."""
    b = num_samples // (num_microbatches * dp_size)
    per = {"global_step": num_samples, "global_microbatch": dp_size * b, "local_microbatch": b}
    size = per[scope]
    return [torch.arange(i, i + size) for i in range(0, num_samples, size)]
