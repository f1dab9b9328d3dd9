"""Megatron's distributed optimizer (ZeRO-1) on the CPU backend: at DP=2 over gloo it shards the
fp32 main weights and Adam states (each rank updates half) and trains to the same weights as
the plain optimizer (bit for bit without clipping; with clipping the grad norm is summed in
another order); the patch that lets it take CPU parameters is undone by
``disable_cpu_backend``."""

import torch
import torch.distributed as dist
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

from megatron_fork.backends import cpu
from tests.support.distributed import run_distributed
from tests.support.megatron_setup import init_megatron
from tests.support.sft_training import build, full_params, train_step


def _trained(distributed_optimizer: bool, clip_grad: float, steps: int):
    model, ddp, optimizer = build(1, 0, distributed_optimizer, clip_grad)
    for step in range(1, steps + 1):
        train_step(ddp, optimizer, step)
    return model, optimizer


def _updated_numel(optimizer) -> int:
    """Elements this rank's Adam updates (its shard of the main weights)."""
    (inner,) = optimizer.chained_optimizers
    return sum(p.numel() for group in inner.optimizer.param_groups for p in group["params"])


def _assert_same_on_every_rank(params: dict, world: int) -> None:
    others = [None] * world
    dist.all_gather_object(others, params)
    for name, tensor in params.items():
        assert all(torch.equal(other[name], tensor) for other in others), name


def _compare_worker(rank, world):
    init_megatron()
    plain_model, plain_optimizer = _trained(False, clip_grad=0.0, steps=3)
    model, optimizer = _trained(True, clip_grad=0.0, steps=3)
    total = sum(p.numel() for p in model.parameters())
    assert _updated_numel(plain_optimizer) == total
    assert 0 < _updated_numel(optimizer) <= total // 2 + 64  # this rank's half (+ padding)
    expected, got = full_params(plain_model), full_params(model)
    for name, tensor in got.items():
        assert torch.equal(tensor, expected[name]), name
    _assert_same_on_every_rank(got, world)  # the all-gather of the updated shards

    # Clipping at 1.0 acts (the grad norm is ~1.6); the sharded norm is summed in another order.
    expected = full_params(_trained(False, clip_grad=1.0, steps=1)[0])
    got = full_params(_trained(True, clip_grad=1.0, steps=1)[0])
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-7)


def test_distributed_optimizer_at_dp2_trains_like_the_plain_optimizer():
    run_distributed(_compare_worker, 2)


def test_patch_is_scoped_to_the_constructor_and_undone():
    cpu.disable_cpu_backend()
    original_init, original_type = DistributedOptimizer.__init__, torch.Tensor.type
    try:
        cpu.enable_cpu_backend()
        assert DistributedOptimizer.__init__ is not original_init
        assert torch.Tensor.type is original_type  # only while the constructor runs
        assert torch.zeros(1).type() == "torch.FloatTensor"
    finally:
        cpu.disable_cpu_backend()
    assert DistributedOptimizer.__init__ is original_init
