"""The Megatron loss function and step preparation on one process: loss-scaling contracts and
the guards that stop a misconfigured step from training on the wrong tokens.

Multi-rank tests assert inside each rank's worker (``_..._worker``); ``run_distributed``
re-raises the first failing rank's error in the test.
"""

import pytest
import torch

from megatron_fork.forking import ForkingLossConfig
from megatron_fork.trainer.forward_step import StepLossScaling, forking_loss_func
from megatron_fork.trainer.parallel_groups import LossGroups
from megatron_fork.trainer.policy_batch import PolicyMicroBatch, canonical_token_order
from tests.support.distributed import run_distributed
from tests.support.reference import logprob_entropy, policy_loss, select_by_sort

B, S, V = 2, 6, 11


def _batch(selected=None):
    gen = torch.Generator().manual_seed(0)
    valid = torch.ones(B, S, dtype=torch.bool)
    valid[:, :2] = False  # prompt
    return PolicyMicroBatch(
        tokens=torch.randint(0, V, (B, S), generator=gen),
        position_ids=torch.arange(S).expand(B, S),
        target=torch.randint(0, V, (B, S), generator=gen),
        valid_mask=valid,
        old_logprob=-torch.rand(B, S, generator=gen) - 2.0,
        advantages=torch.tensor([[1.0], [-0.5]]).expand(B, S).contiguous(),
        token_order=canonical_token_order(torch.arange(B), S),
        selected=selected,
    )


def _logits():
    return torch.randn(B, S, V, generator=torch.Generator().manual_seed(1)).requires_grad_(True)


def _reference(batch, logits, cfg):
    lp, h = logprob_entropy(logits.double(), batch.target)
    sel = select_by_sort(h.detach(), batch.valid_mask, batch.token_order, cfg.rho, cfg.strategy)
    n = batch.valid_mask.sum() if cfg.normalizer == "all_tokens" else sel.sum()
    loss = policy_loss(lp, batch.old_logprob.double(), batch.advantages, sel, n, cfg, h)
    return loss, sel


def test_default_contract_returns_the_share_times_microbatches():
    cfg = ForkingLossConfig(scope="local_microbatch", rho=0.5)
    batch, logits = _batch(), _logits()
    scaling = StepLossScaling(per_token=False, num_microbatches=3, normalizer=torch.tensor(8.0))
    loss, metrics = forking_loss_func(batch, cfg, LossGroups(), scaling, logits)
    ref, _ = _reference(batch, logits, cfg)  # normalised by its own valid count: 8 tokens
    assert int(batch.valid_mask.sum()) == 8
    # The schedule divides by M = 3 (and multiplies by CP = 1); DDP averages over DP = 1.
    torch.testing.assert_close(loss.double() / 3, ref.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(metrics["loss"].double(), ref.detach(), rtol=1e-6, atol=0)


def test_per_token_contract_returns_sum_and_local_count():
    cfg = ForkingLossConfig(scope="local_microbatch", rho=0.5, normalizer="selected_tokens")
    batch, logits = _batch(), _logits()
    loss, num_tokens, _ = forking_loss_func(
        batch, cfg, LossGroups(), StepLossScaling(per_token=True, num_microbatches=2), logits
    )
    ref, sel = _reference(batch, logits, cfg)
    assert num_tokens.dtype == torch.int32 and int(num_tokens) == int(sel.sum()) == 4
    torch.testing.assert_close(loss.double() / 4, ref.detach(), rtol=1e-6, atol=0)


def test_global_step_scope_without_the_step_selection_is_refused():
    scaling = StepLossScaling(per_token=True, num_microbatches=1)
    with pytest.raises(ValueError, match="global_step"):
        forking_loss_func(_batch(), ForkingLossConfig(), LossGroups(), scaling, _logits())


def test_default_contract_needs_the_step_normaliser():
    with pytest.raises(ValueError, match="normaliser"):
        StepLossScaling(per_token=False, num_microbatches=2)


def _prepare_worker(rank, world):
    from megatron_fork.trainer.actor_step import prepare_step
    from tests.support.lookup_lm import LookupLM, lookup_config
    from tests.support.megatron_setup import init_megatron

    init_megatron()
    model = LookupLM(torch.zeros(4, V), lookup_config(1, 1, per_token=False))
    groups = LossGroups.from_parallel_state()
    with pytest.raises(ValueError, match="old-logprob pass"):
        prepare_step(model, ForkingLossConfig(), [_batch()], None, groups)
    prepared = prepare_step(
        model, ForkingLossConfig(scope="local_microbatch"), [_batch()], None, groups
    )
    assert not prepared.scaling.per_token  # read from the model's config
    assert float(prepared.scaling.normalizer) == 8.0
    seeds = {
        prepare_step(
            model,
            ForkingLossConfig(scope="local_microbatch", strategy="random"),
            [_batch()],
            None,
            groups,
            step_index=i,
        ).config.seed
        for i in range(3)
    }
    assert len(seeds) == 3  # a fresh random draw per optimizer step


def test_prepare_step_guards_and_per_step_seed():
    run_distributed(_prepare_worker, 1)
