"""The op on a CUDA device (bf16 and fp32 logits) against the fp64 CPU reference.
Marked ``gpu``: skipped, with the reason printed, where no CUDA device exists."""

import pytest
import torch

from megatron_fork.ops import vocab_parallel_logprob_entropy
from tests.support.reference import logprob_entropy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-5)])
def test_op_on_cuda_matches_fp64_reference(dtype, tol):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(1024, 4096, generator=gen) * 2).to(dtype)
    target = torch.randint(0, 4096, (1024,), generator=gen)
    lp, h = vocab_parallel_logprob_entropy(logits.cuda(), target.cuda(), chunk_size=256)
    ref_lp, ref_h = logprob_entropy(logits.double(), target)  # same rounded inputs, in fp64
    assert lp.dtype == h.dtype == torch.float32
    assert float((lp.cpu().double() - ref_lp).abs().max() / ref_lp.abs().max()) <= tol
    assert float((h.cpu().double() - ref_h).abs().max() / ref_h.abs().max()) <= tol


def test_op_on_cuda_never_waits_for_the_device():
    """CUDA's own detector: any operator that synchronises the host raises in "error" mode."""
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(1024, 4096, generator=gen) * 2).cuda().requires_grad_(True)
    target = torch.randint(0, 5000, (1024,), generator=gen).cuda()  # some ids in no shard
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        lp, h = vocab_parallel_logprob_entropy(logits, target, chunk_size=256, vocab_size=4096)
        (lp.sum() + 0.5 * h.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert logits.grad is not None
