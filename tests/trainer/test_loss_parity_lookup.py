"""Loss and gradient parity w.r.t. the logits under TP, CP, DP and their products.

A lookup-table model (tests/support/lookup_lm.py) makes the logits parameters; the step runs
through Megatron's real no-pipelining schedule, DDP and finalize_model_grads on gloo ranks, and
is compared with the single-process fp64 reference (tests/support/reference.py).
"""

import dataclasses

import pytest
import torch

from megatron_fork.forking import ForkingLossConfig
from tests.support.distributed import run_distributed
from tests.support.reference import reference_step
from tests.support.step_data import make_step

NUM_MICROBATCHES = 2
MICRO_BATCH_SIZE = 2
SEQ_LEN = 8
VOCAB = 16
RTOL = 1e-5


def _relative_error(actual, expected):
    return float((actual.double() - expected.double()).abs().max() / expected.abs().max())


def _worker(rank, world, tp, cp, per_token, cfg_fields, data_path):
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel as DDP
    from megatron.core.distributed import DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_fork.backends.cpu import enable_cpu_backend
    from megatron_fork.forking.selection import select_tokens
    from megatron_fork.trainer.forward_step import (
        StepLossScaling,
        make_forking_forward_step,
        make_logprob_forward_step,
    )
    from megatron_fork.trainer.parallel_groups import LossGroups
    from megatron_fork.trainer.policy_batch import PolicyMicroBatch, context_parallel_slice
    from megatron_fork.trainer.step_tokens import select_step_tokens, step_normalizer
    from tests.support.lookup_lm import LookupLM, lookup_config
    from tests.support.step_data import sample_rows

    enable_cpu_backend()
    ps.initialize_model_parallel(tensor_model_parallel_size=tp, context_parallel_size=cp)
    cfg = ForkingLossConfig(**cfg_fields)
    data = torch.load(data_path, weights_only=True)
    step, ref = data["step"], data["reference"]
    groups = LossGroups.from_parallel_state()
    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    tp_rank = ps.get_tensor_model_parallel_rank()
    vocab_slice = slice(tp_rank * VOCAB // tp, (tp_rank + 1) * VOCAB // tp)

    config = lookup_config(tp, cp, per_token)
    config.finalize_model_grads_func = finalize_model_grads
    model = LookupLM(step["logits"][:, vocab_slice].float(), config)
    ddp_model = DDP(config, DistributedDataParallelConfig(), model)

    def microbatch(m, selected=None):
        rows = sample_rows(step, m, dp_rank, dp, MICRO_BATCH_SIZE)
        order = step["order"][rows]
        return PolicyMicroBatch(
            tokens=order,
            position_ids=torch.arange(SEQ_LEN).expand(len(rows), SEQ_LEN),
            target=step["target"][rows],
            valid_mask=step["valid"][rows],
            old_logprob=ref["old_logprob"][rows],
            advantages=step["advantages"][rows].float(),
            token_order=order,
            ref_logprob=ref["ref_logprob"][rows],
        ).context_parallel_shard(groups.cp)

    shards = [microbatch(m) for m in range(NUM_MICROBATCHES)]
    forward_backward = get_forward_backward_func()
    common = dict(
        model=[ddp_model],
        num_microbatches=NUM_MICROBATCHES,
        seq_length=SEQ_LEN // cp,
        micro_batch_size=MICRO_BATCH_SIZE,
    )
    # Old-logprob pass: entropies of every shard (real forward-only schedule).
    old = forward_backward(
        forward_step_func=make_logprob_forward_step(cfg, groups),
        data_iterator=iter(shards),
        forward_only=True,
        **common,
    )
    entropies = [o["entropy"] for o in old]
    if cfg.scope == "global_step":
        masks = select_step_tokens(cfg, shards, entropies, groups)
        shards = [dataclasses.replace(mb, selected=m) for mb, m in zip(shards, masks, strict=True)]
    else:
        scope_group = groups.scope_group(cfg.scope)
        masks = [
            select_tokens(
                h, mb.valid_mask, cfg.rho, cfg.strategy, scope_group, cfg.seed, mb.token_order
            ).mask
            for h, mb in zip(entropies, shards, strict=True)
        ]
    for m, mask in enumerate(masks):
        rows = sample_rows(step, m, dp_rank, dp, MICRO_BATCH_SIZE)
        expected = context_parallel_slice(ref["selected"][rows], groups.cp)
        assert torch.equal(mask, expected), f"micro-batch {m}: selected tokens differ"

    normalizer = None if per_token else step_normalizer(cfg, shards, groups)
    scaling = StepLossScaling(per_token, NUM_MICROBATCHES, normalizer)
    out = forward_backward(
        forward_step_func=make_forking_forward_step(cfg, groups, scaling),
        **{**common, "data_iterator": iter(shards)},
        forward_only=False,
    )
    loss = sum(o["loss"] for o in out)
    if per_token:
        loss = loss / ref["normalizer"]
    assert _relative_error(loss, ref["loss"]) <= RTOL, (float(loss), float(ref["loss"]))
    grad = model.table.main_grad
    expected = ref["grad"][:, vocab_slice]
    assert _relative_error(grad, expected) <= RTOL, _relative_error(grad, expected)


LAYOUTS = {  # name: (world size, TP, CP)
    "TP2": (2, 2, 1),
    "CP2": (2, 1, 2),
    "DP2": (2, 1, 1),
    "DP2xCP2": (4, 1, 2),
    "TP2xCP2": (4, 2, 2),
}

CONFIGS = {
    "paper": dict(),  # top 20%, global_step, all_tokens
    "public_code": dict(scope="local_microbatch", normalizer="selected_tokens"),
    "global_microbatch_bottom": dict(scope="global_microbatch", strategy="bottom", rho=0.8),
    "all_tokens_kl_entropy": dict(strategy="all", kl_coef=0.1, entropy_coef=0.01),
    "temperature": dict(rho=0.5, temperature=0.7, chunk_size=3, entropy_coef=0.05),
}


def _run_case(tmp_path, layout, config_name, per_token):
    world, tp, cp = LAYOUTS[layout]
    dp = world // (tp * cp)
    cfg_fields = CONFIGS[config_name]
    cfg = ForkingLossConfig(**cfg_fields)
    num_samples = NUM_MICROBATCHES * dp * MICRO_BATCH_SIZE
    step = make_step(num_samples, SEQ_LEN, VOCAB, seed=world + tp)
    reference = reference_step(step, cfg, NUM_MICROBATCHES, dp)
    assert abs(reference["loss"]) > 1e-2, "test data gives a cancelling loss: change the data"
    reference["normalizer"] = torch.tensor(
        float(
            step["valid"].sum() if cfg.normalizer == "all_tokens" else reference["selected"].sum()
        )
    )
    data_path = tmp_path / "step.pt"
    torch.save({"step": step, "reference": reference}, data_path)
    run_distributed(_worker, world, tp, cp, per_token, cfg_fields, str(data_path))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_paper_setting_matches_reference(tmp_path, layout):
    _run_case(tmp_path, layout, "paper", per_token=False)


@pytest.mark.parametrize("config_name", [c for c in CONFIGS if c != "paper"])
def test_loss_variants_match_reference_under_dp2xcp2(tmp_path, config_name):
    _run_case(tmp_path, "DP2xCP2", config_name, per_token=False)


@pytest.mark.parametrize("layout", ["DP2xCP2", "TP2xCP2"])
def test_per_token_loss_contract_matches_reference(tmp_path, layout):
    _run_case(tmp_path, layout, "public_code", per_token=True)
