"""Weight sync: a Megatron Qwen3 (TP=2, or PP=2) streams its weights through the one mapping,
in size-bounded buckets, into the torch rollout engine, which then gives the same next-token
distribution as the Megatron model; again after the trainer's weights change.

Multi-rank tests assert inside each rank's worker (``_..._worker``); ``run_distributed``
re-raises the first failing rank's error in the test.
"""

import zlib

import pytest
import torch
import torch.distributed as dist

from tests.support.distributed import run_distributed
from tests.support.megatron_setup import gather_vocab, init_megatron
from tests.support.tiny_qwen3 import tiny_qwen3_config, tiny_qwen3_model

PROMPTS = torch.tensor([[3, 14, 15, 9, 26, 5], [2, 7, 1, 8, 28, 18]])
BUCKET_BYTES = 8 * 1024


def _megatron_log_probs(model, tp_group, vocab):
    """Log-softmax over the true vocabulary at every prompt position (last stage), else None."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    positions = torch.arange(PROMPTS.shape[1]).expand_as(PROMPTS)

    def forward_step(data_iterator, model):
        logits = model(PROMPTS, positions, None, labels=None)  # [b, s, V/TP]
        return logits, lambda out: (torch.zeros(()), {"logits": out.detach()})

    outputs = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([None]),
        model=[model],
        num_microbatches=1,
        seq_length=PROMPTS.shape[1],
        micro_batch_size=PROMPTS.shape[0],
        forward_only=True,
    )
    if not ps.is_pipeline_last_stage():
        return None
    logits = gather_vocab(outputs[0]["logits"], tp_group)
    return torch.log_softmax(logits[..., :vocab], dim=-1)


def _push_weights(model, layout, engine, version):
    """Every stage streams its HF-named tensors; rank 0 (holding the engine) applies them."""
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    from megatron_fork.models.hf_mapping import iter_hf_weights, size_bounded_buckets

    offset = get_transformer_layer_offset(model.config)
    stream = iter_hf_weights(model, layout, ps.get_tensor_model_parallel_group(), offset)
    buckets = list(size_bounded_buckets(stream, BUCKET_BYTES))
    for bucket in buckets:
        assert sum(t.numel() * t.element_size() for _, t in bucket) <= BUCKET_BYTES or (
            len(bucket) == 1
        )
    every_rank = [None] * dist.get_world_size()
    dist.all_gather_object(every_rank, buckets)  # stands in for the engine's transport
    if engine is not None:
        for rank_buckets in every_rank:
            for bucket in rank_buckets:
                engine.update_weights(bucket, version=version)


def _sync_worker(rank, world, tp, pp):
    from megatron.core import parallel_state as ps

    from megatron_fork.models.hf_mapping import Qwen3Layout
    from megatron_fork.models.qwen3 import build_qwen3_model
    from megatron_fork.rollout.torch_engine import TorchRolloutEngine

    init_megatron(tp=tp, pp=pp, seed=11)
    hf_config = tiny_qwen3_config()
    model = build_qwen3_model(
        hf_config,
        tp,
        pp,
        vocab_multiple=16,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
    )
    layout = Qwen3Layout.from_hf_config(hf_config)
    engine = TorchRolloutEngine(tiny_qwen3_model(seed=99)) if rank == 0 else None
    last_stage_rank = dist.get_world_size() - 1  # holds the last stage's TP rank 0 or 1

    for version in (1, 2):
        _push_weights(model, layout, engine, version)
        expected = _megatron_log_probs(model, ps.get_tensor_model_parallel_group(), 60)
        box = [expected]
        dist.broadcast_object_list(box, src=last_stage_rank)
        if engine is not None:
            assert engine.version == version
            with torch.no_grad():
                got = torch.log_softmax(engine.model(input_ids=PROMPTS).logits, dim=-1)
            error = (got - box[0]).abs().max()
            assert error <= 2e-5, f"version {version}: next-token log-probs differ by {error}"
        with torch.no_grad():  # the trainer's weights move on (an optimizer phase)
            for name, param in model.named_parameters():
                # Seeded by name, so TP-replicated parameters (norms) stay identical on every
                # TP rank, as an optimizer step keeps them.
                gen = torch.Generator().manual_seed(zlib.crc32(f"{name}{version}".encode()))
                param.add_(0.05 * torch.randn(param.shape, generator=gen))


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)])
def test_engine_matches_megatron_after_each_weight_sync(tp, pp):
    run_distributed(_sync_worker, tp * pp, tp, pp)
