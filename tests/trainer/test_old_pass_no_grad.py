"""The old-logprob pass keeps nothing for a backward: it runs Megatron's forward-only schedule
without autograd (Megatron's schedule leaves the caller's mode as it is)."""

import torch

from tests.support.distributed import run_distributed
from tools.bench_old_pass_memory import policy_batch

V, S, B = 64, 16, 2


def _saved_bytes(run) -> tuple[int, list]:
    """Bytes autograd saves for backward while ``run()`` runs (grad enabled by the caller)."""
    saved = [0]

    def count(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t), torch.enable_grad():
        outputs = run()
    return saved[0], outputs


def _worker(rank, world):
    from megatron_fork.forking.config import ForkingLossConfig
    from megatron_fork.models.gpt import GPTShape, build_gpt_model
    from megatron_fork.trainer.actor_step import logprob_schedule, old_logprob_pass
    from megatron_fork.trainer.parallel_groups import LossGroups
    from tests.support.megatron_setup import init_megatron

    init_megatron(seed=0)
    model = build_gpt_model(GPTShape(vocab_size=V, max_sequence_length=S))
    batch = policy_batch(B, S, V)  # random tokens, every target a response token
    args = (model, [batch], ForkingLossConfig(), LossGroups.from_parallel_state())
    kept, with_graph = _saved_bytes(lambda: logprob_schedule(*args))
    assert kept > 0, "the schedule under autograd saved nothing: the measurement is broken"
    kept, without = _saved_bytes(lambda: old_logprob_pass(*args))
    assert kept == 0, f"old_logprob_pass kept {kept} bytes of activations for a backward"
    torch.testing.assert_close(without[0].logprob, with_graph[0].logprob, rtol=0, atol=0)
    torch.testing.assert_close(without[0].entropy, with_graph[0].entropy, rtol=0, atol=0)
    assert not without[0].logprob.requires_grad


def test_old_logprob_pass_keeps_no_activations():
    run_distributed(_worker, 1)
