"""The op issues no operator that makes the host wait for the device.

On a GPU, ``torch.nonzero``, boolean-mask indexing, ``.item()`` and friends copy a result to
the host before the next kernel can be queued, once per chunk (22 chunks per 11k-token
micro-batch). The op must index without them. On CPU the same aten operators are visible
through a dispatch mode, so the check runs here; ``test_logprob_entropy_gpu.py`` repeats it with
CUDA's own sync detector.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from megatron_fork.ops import vocab_parallel_logprob_entropy

HOST_SYNCING_OPS = frozenset(
    {
        "aten.nonzero.default",
        "aten.nonzero_static.default",
        "aten.masked_select.default",
        "aten._local_scalar_dense.default",  # .item(), bool(tensor), int(tensor)
        "aten.unique.default",
        "aten._unique2.default",
        "aten.repeat_interleave.Tensor",
    }
)


class _RecordOps(TorchDispatchMode):
    """Every aten operator dispatched while active, by name."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("vocab_size", [None, 11])
def test_forward_and_backward_issue_no_host_syncing_op(vocab_size):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 9, 13, generator=gen, requires_grad=True)  # [b, s, V]
    target = torch.randint(0, 15, (2, 9), generator=gen)  # some ids past V: no target
    with _RecordOps() as forward:
        logprob, entropy = vocab_parallel_logprob_entropy(
            logits, target, temperature=0.7, chunk_size=4, vocab_size=vocab_size
        )
    loss = (logprob * 0.3 + entropy * 0.7).sum()
    with _RecordOps() as backward:
        loss.backward()
    assert backward.ops, "the recorder saw no operator: the check itself is broken"
    assert not HOST_SYNCING_OPS & set(forward.ops), sorted(HOST_SYNCING_OPS & set(forward.ops))
    assert not HOST_SYNCING_OPS & set(backward.ops), sorted(HOST_SYNCING_OPS & set(backward.ops))
