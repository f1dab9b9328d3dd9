"""Selection and loss over a real process group: exactly the single-process answer on the
concatenated data, a rank with no valid token joins every collective with zero loss and zero
gradient, and bad input fails on every rank without a hang.

Multi-rank tests assert inside each rank's worker (``_..._worker``); ``run_distributed``
re-raises the first failing rank's error in the test.
"""

import pytest
import torch
import torch.distributed as dist

from megatron_fork.forking import ForkingLossConfig, forking_policy_loss, select_forking_tokens
from tests.support.collective_counter import count_collectives
from tests.support.distributed import run_distributed
from tests.support.reference import select_by_sort

SIZES = (13, 7, 9)  # tokens per rank; rank 2 holds only padding


def _data():
    """The whole scope's tokens, concatenated in rank order, with ties in entropy."""
    gen = torch.Generator().manual_seed(11)
    n = sum(SIZES)
    entropy = torch.randint(0, 6, (n,), generator=gen).float() / 4  # few values: many ties
    valid = torch.rand(n, generator=gen) > 0.25
    valid[SIZES[0] + SIZES[1] :] = False
    return {
        "entropy": entropy,
        "valid": valid,
        "order": torch.randperm(n, generator=gen),  # canonical order unrelated to rank layout
        "logprob": -torch.rand(n, generator=gen) * 3,
        "old_noise": 0.3 * torch.randn(n, generator=gen),
        "advantages": 0.5 + torch.randn(n, generator=gen),
    }


def _local(tensor, rank):
    start = sum(SIZES[:rank])
    return tensor[start : start + SIZES[rank]]


def _selection_worker(rank, world):
    data = _data()
    local = {k: _local(v, rank) for k, v in data.items()}
    for strategy in ("top", "bottom", "random", "all"):
        mask = select_forking_tokens(
            local["entropy"], local["valid"], 0.3, strategy, dist.group.WORLD, 5, local["order"]
        )
        alone = select_forking_tokens(
            data["entropy"], data["valid"], 0.3, strategy, None, 5, data["order"]
        )
        assert torch.equal(mask, _local(alone, rank)), strategy
        if strategy in ("top", "bottom"):
            by_sort = select_by_sort(data["entropy"], data["valid"], data["order"], 0.3, strategy)
            assert torch.equal(mask, _local(by_sort, rank)), strategy


def test_selection_over_a_group_equals_single_process_selection():
    run_distributed(_selection_worker, len(SIZES))


def _loss_worker(rank, world, cfg_fields):
    cfg = ForkingLossConfig(**cfg_fields)
    data = _data()
    old = data["logprob"] + data["old_noise"]
    logprob = _local(data["logprob"], rank).clone().requires_grad_(True)
    entropy = _local(data["entropy"], rank).clone().requires_grad_(True)
    args = (_local(old, rank), _local(data["advantages"], rank), _local(data["valid"], rank))
    with count_collectives() as calls:
        loss, metrics = forking_policy_loss(
            logprob, *args, entropy, cfg, dist.group.WORLD, order=_local(data["order"], rank)
        )
    (loss).backward()

    full_lp = data["logprob"].clone().requires_grad_(True)
    full_h = data["entropy"].clone().requires_grad_(True)
    ref_loss, ref_metrics = forking_policy_loss(
        full_lp, old, data["advantages"], data["valid"], full_h, cfg, None, order=data["order"]
    )
    ref_loss.backward()

    total = loss.detach().clone()
    dist.all_reduce(total)
    assert torch.allclose(total, ref_loss.detach(), rtol=1e-6, atol=0), (total, ref_loss)
    assert torch.allclose(logprob.grad, _local(full_lp.grad, rank), rtol=1e-6, atol=1e-9)
    if cfg.entropy_coef > 0:
        assert torch.allclose(entropy.grad, _local(full_h.grad, rank), rtol=1e-6, atol=1e-9)
    else:
        assert entropy.grad is None and full_h.grad is None
    for name, value in ref_metrics.items():
        assert torch.allclose(metrics[name], value, rtol=1e-6, equal_nan=True), name
    if rank == 2:  # only padding here: still in every collective, contributes nothing
        assert sum(calls.values()) > 0
        assert loss.item() == 0.0
        assert not logprob.grad.any()
        assert entropy.grad is None or not entropy.grad.any()
    # Every rank entered the same collectives (a mismatch would have hung, not reached here).
    counts = torch.tensor([calls["all_reduce"], calls["all_gather"]])
    gathered = [torch.zeros_like(counts) for _ in range(world)]
    dist.all_gather(gathered, counts)
    assert all(torch.equal(g, gathered[0]) for g in gathered)


@pytest.mark.parametrize(
    "cfg_fields",
    [
        dict(rho=0.3),
        dict(rho=0.3, normalizer="selected_tokens", entropy_coef=0.1),
        dict(strategy="random", rho=0.5, seed=3),
        dict(strategy="bottom", rho=0.7, dual_clip_c=None),
    ],
)
def test_loss_over_a_group_adds_up_to_the_single_process_loss(cfg_fields):
    run_distributed(_loss_worker, len(SIZES), cfg_fields)


def _nan_worker(rank, world):
    entropy = torch.rand(8)
    if rank == 1:
        entropy[3] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite entropy"):
        select_forking_tokens(entropy, torch.ones(8, dtype=torch.bool), 0.2, group=dist.group.WORLD)


def test_nan_entropy_on_one_rank_raises_on_every_rank():
    run_distributed(_nan_worker, 2)


def _bad_input_worker(rank, world):
    cfg = ForkingLossConfig()
    x = torch.zeros(6)
    valid = torch.ones(6, dtype=torch.bool)
    with count_collectives() as calls:
        with pytest.raises(ValueError, match="old_logprob"):
            forking_policy_loss(x, torch.zeros(5), x, valid, x, cfg, dist.group.WORLD)
        with pytest.raises(ValueError, match="rho"):
            select_forking_tokens(x, valid, 1.5, group=dist.group.WORLD)
        with pytest.raises(ValueError, match="strategy"):
            select_forking_tokens(x, valid, 0.2, "middle", group=dist.group.WORLD)
        with pytest.raises(TypeError, match="bool"):
            forking_policy_loss(x, x, x, valid, x, cfg, dist.group.WORLD, selected=x)
    assert sum(calls.values()) == 0, "an error must come before any collective"


def test_bad_input_fails_before_any_collective():
    run_distributed(_bad_input_worker, 2)
