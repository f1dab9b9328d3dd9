"""Packed against padded training on the same samples (issue 14, points 2 and 3): the trainer's
real path (rank 0's step layout -> rollout scatter -> micro-batches -> old-logprob pass ->
step selection -> Megatron's schedule with DDP) gives the same per-token log-probs and
entropies, the same ``global_step`` selection, the same loss and the same gradients within
1e-5, at TP=2, PP=2 and DP=2 with a real Megatron GPT, and at CP=2 with the attention-free
lookup model (Megatron's local attention has no CP). The padded layout is the independent
reference: each sample a row of the step's longest, no ``cu_seqlens``.

Multi-rank tests assert inside each rank's worker; ``run_distributed`` re-raises the first
failing rank's error in the test.
"""

import dataclasses
import random

import pytest
import torch

from megatron_fork.forking import ForkingLossConfig
from megatron_fork.rollout.types import FinishReason, Sample
from tests.support.distributed import run_distributed
from tests.support.megatron_setup import init_megatron, wrap_ddp

VOCAB = 64
RTOL = 1e-5
PAD_ID = 0
NUM_SAMPLES = 8
CPU = torch.device("cpu")


def _samples(seed: int) -> list[Sample]:
    """Varied lengths (1-token responses, long ones) and ids; the same on every rank."""
    rng = random.Random(seed)
    out = []
    for i in range(NUM_SAMPLES):
        prompt = tuple(rng.randrange(1, VOCAB) for _ in range(rng.randrange(1, 7)))
        output = tuple(
            rng.randrange(1, VOCAB) for _ in range(1 if i == 2 else rng.randrange(2, 14))
        )
        logprobs = tuple(-rng.random() * 3 for _ in output)
        out.append(Sample(f"s{i}", prompt, output, logprobs, FinishReason("stop"), 0))
    return out


def _layout(samples, packing: bool, dp_size: int, cp_size: int, multiple: int):
    from megatron_fork.rl.step_layout import packed_step_layout, padded_step_layout
    from megatron_fork.rl.train_batch import row_length
    from megatron_fork.trainer.packing import packing_layout

    positions = [len(s.prompt_ids) + len(s.output_ids) - 1 for s in samples]
    trainable = [i != 5 for i in range(len(samples))]  # one filler sample
    if not packing:
        row = row_length(max(positions) + 1, multiple)
        return padded_step_layout(positions, trainable, 1, dp_size, 2, row)
    # a budget of ~3 samples: several micro-batches per rank, one may be padding only
    return packed_step_layout(
        positions, trainable, 1, dp_size, 24, packing_layout(cp_size, multiple)
    )


def _model(kind: str, tp: int, pp: int, cp: int):
    from megatron.core import parallel_state as ps

    if kind == "lookup":
        from tests.support.lookup_lm import LookupLM, lookup_config

        table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(3))
        rank = ps.get_tensor_model_parallel_rank()
        shard = table[:, rank * VOCAB // tp : (rank + 1) * VOCAB // tp]
        return LookupLM(shard, lookup_config(tp, cp, per_token=False))
    from megatron_fork.models.gpt import GPTShape, build_gpt_model
    from megatron_fork.trainer.megatron_options import variable_seq_lengths_options

    return build_gpt_model(
        GPTShape(vocab_size=VOCAB, hidden_size=32, num_layers=2),
        tp,
        pp,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        transformer_options=variable_seq_lengths_options(pp),
    )


def _by_order(shards, values) -> dict[int, float]:
    """{canonical token order: value} over the valid tokens of this rank's shards."""
    out = {}
    for mb, v in zip(shards, values, strict=True):
        for order, x in zip(
            mb.token_order[mb.valid_mask].tolist(), v[mb.valid_mask].tolist(), strict=False
        ):
            out[order] = x
    return out


def _gathered(mapping: dict, group) -> dict:
    import torch.distributed as dist

    parts = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, mapping, group=group)
    return {k: v for part in parts for k, v in part.items()}


def _train_once(ddp_model, samples, packing, cfg, groups, device=CPU):
    """One optimizer step's forward/backward through the trainer's path; (old-pass
    {order: (logprob, entropy)}, selected orders, loss, {param: grad}) on the last stage."""
    from megatron.core import parallel_state as ps
    from megatron.core.utils import get_model_config

    from megatron_fork.rl.rollout_scatter import (
        RolloutToScatter,
        ScatterGroups,
        scatter_rollout,
    )
    from megatron_fork.rl.train_batch import row_multiple, slice_mini_batches
    from megatron_fork.trainer.actor_step import (
        forward_backward_step,
        old_logprob_pass,
        prepare_step,
    )

    multiple = row_multiple(get_model_config(ddp_model))
    layout = _layout(samples, packing, groups.dp_size, groups.cp_size, multiple)
    if packing:
        assert layout.microbatch_counts()[0] > 1  # the budget splits the step
    advantages = torch.linspace(-1.0, 1.5, len(samples))
    trainable = [i != 5 for i in range(len(samples))]

    def work():
        return RolloutToScatter(samples, advantages, trainable, layout)

    mine = scatter_rollout(work, ScatterGroups.from_parallel_state(), device)
    (shards,) = slice_mini_batches(mine, packing, multiple, groups, PAD_ID)
    old = old_logprob_pass(ddp_model, shards, cfg, groups)
    if old is not None:
        shards = [
            dataclasses.replace(mb, old_logprob=o.logprob)
            for mb, o in zip(shards, old, strict=False)
        ]
    prepared = prepare_step(ddp_model, cfg, shards, old, groups)
    ddp_model.zero_grad_buffer()
    outputs = forward_backward_step(ddp_model, prepared, groups)
    grads = {n: p.main_grad.clone() for n, p in ddp_model.module.named_parameters()}
    if not ps.is_pipeline_last_stage():
        return None, None, None, grads
    pairs = [torch.stack([o.logprob, o.entropy], -1) for o in old]
    per_token = _gathered(_by_order(shards, pairs), groups.dp_cp)
    selected = [mb.token_order[mb.selected & mb.valid_mask].tolist() for mb in prepared.shards]
    selected = _gathered({o: 1 for orders in selected for o in orders}, groups.dp_cp)
    loss = sum(float(o["loss"]) for o in outputs)
    return per_token, set(selected), loss, grads


def _close(a, b, rtol=RTOL) -> bool:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return bool((a - b).abs().max() <= rtol * max(b.abs().max(), 1e-6))


def check_packed_against_padded(ddp_model, groups, cfg, rtol=RTOL, device=CPU):
    """Train once padded, once packed, on the same samples and weights; compare (last stage:
    per-token values, selection, loss; every stage: gradients) within ``rtol``."""
    samples = _samples(seed=11)
    padded = _train_once(ddp_model, samples, False, cfg, groups, device)
    packed = _train_once(ddp_model, samples, True, cfg, groups, device)
    if padded[0] is not None:
        assert padded[0].keys() == packed[0].keys() and len(padded[0]) > 40
        orders = sorted(padded[0])
        assert _close([packed[0][o] for o in orders], [padded[0][o] for o in orders], rtol)
        assert packed[1] == padded[1] and 0 < len(packed[1]) < len(padded[0])
        assert _close(packed[2], padded[2], rtol), (packed[2], padded[2])
    for name, grad in padded[3].items():
        assert grad.abs().sum() > 0, name
        assert _close(packed[3][name], grad, rtol), name


def _parity_worker(rank, world, kind, tp, pp, cp, cfg_fields):
    init_megatron(tp=tp, pp=pp, cp=cp, seed=7)
    from megatron_fork.trainer.parallel_groups import LossGroups

    ddp_model = wrap_ddp(_model(kind, tp, pp, cp))
    cfg = ForkingLossConfig(**cfg_fields, vocab_size=VOCAB)
    check_packed_against_padded(ddp_model, LossGroups.from_parallel_state(), cfg)


LAYOUTS = {
    "tp2": ("gpt", 2, 1, 1),
    "pp2": ("gpt", 1, 2, 1),
    "dp2": ("gpt", 1, 1, 1),
    "cp2-lookup": ("lookup", 1, 1, 2),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(
    "cfg_fields",
    [{}, {"strategy": "random", "normalizer": "selected_tokens", "entropy_coef": 0.01}],
    ids=["paper", "random-selected"],
)
def test_packed_matches_padded_training(layout, cfg_fields):
    kind, tp, pp, cp = LAYOUTS[layout]
    run_distributed(_parity_worker, 2, kind, tp, pp, cp, cfg_fields, timeout=180)
