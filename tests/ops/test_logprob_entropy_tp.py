"""The op over a real TP group (gloo ranks): each rank holds a vocabulary shard; outputs and
gradients match the single-process fp64 reference; two all-reduces in forward, none in backward;
the logits are left untouched.

Multi-rank tests assert inside each rank's worker (``_..._worker``); ``run_distributed``
re-raises the first failing rank's error in the test.
"""

import pytest
import torch
import torch.distributed as dist

from megatron_fork.ops import vocab_parallel_logprob_entropy
from tests.support.collective_counter import count_collectives
from tests.support.distributed import run_distributed
from tests.support.reference import logprob_entropy, relative_error

TOKENS, VOCAB = 37, 48


def _tp_worker(rank, world, temperature, chunk_size, vocab_size):
    gen = torch.Generator().manual_seed(0)
    full = torch.randn(TOKENS, VOCAB, generator=gen) * 3  # fp32
    real_vocab = vocab_size or VOCAB
    full[:, real_vocab:] = 1e4  # TP padding: must not count, whatever it holds
    target = torch.randint(0, real_vocab, (TOKENS,), generator=gen)
    target[0] = -100  # an ignored position: logprob 0
    weights = torch.randn(2, TOKENS, generator=gen)

    reference = full.double().requires_grad_(True)
    ref_lp, ref_h = logprob_entropy(reference[:, :real_vocab], target.clamp(min=0), temperature)
    ref_lp = ref_lp * (target >= 0)
    (ref_lp * weights[0] + ref_h * weights[1]).sum().backward()

    width = VOCAB // world
    shard = full[:, rank * width : (rank + 1) * width].clone().requires_grad_(True)
    before = shard.detach().clone()
    with count_collectives() as forward_calls:
        lp, h = vocab_parallel_logprob_entropy(
            shard, target, dist.group.WORLD, temperature, chunk_size, vocab_size
        )
    with count_collectives() as backward_calls:
        (lp * weights[0] + h * weights[1]).sum().backward()

    assert lp.dtype == h.dtype == torch.float32
    assert relative_error(lp, ref_lp.detach()) <= 1e-5
    assert relative_error(h, ref_h.detach()) <= 1e-5
    expected_grad = reference.grad[:, rank * width : (rank + 1) * width]  # 0 on padding
    grad_error = (shard.grad.double() - expected_grad).abs().max() / reference.grad.abs().max()
    assert float(grad_error) <= 1e-5
    assert torch.equal(shard.detach(), before), "the op modified its input"
    # One MAX and one SUM all-reduce whatever the chunking; nothing else (no vocab gather).
    assert forward_calls == {
        "all_reduce": 2,
        f"all_reduce:{dist.ReduceOp.MAX}": 1,
        f"all_reduce:{dist.ReduceOp.SUM}": 1,
    }, forward_calls
    assert sum(backward_calls.values()) == 0, backward_calls


@pytest.mark.parametrize(
    "world, temperature, chunk_size, vocab_size",
    [(2, 1.0, 5, None), (2, 0.7, None, None), (4, 1.3, 8, None), (4, 1.0, 7, 30)],
)
def test_tp_sharded_op_matches_full_vocab_reference(world, temperature, chunk_size, vocab_size):
    # With vocab_size 30 over 4 ranks of 12 columns: rank 2 holds 6 real columns, rank 3 none.
    run_distributed(_tp_worker, world, temperature, chunk_size, vocab_size)
