"""Weight sync into the torch rollout engine on rank 0 (``sync_weights``): a Megatron Qwen3
(TP=2, or PP=2) streams its weights through the one mapping, in size-bounded buckets, and the
engine then gives the same next-token distribution as the Megatron model; again after the
trainer's weights change. At PP=2 the second stage's leader sends its weights to rank 0 as
tensors (point to point, its stage's bytes exactly), not pickled. Weight sync to rollout
servers, stage by stage: ``test_stage_weight_sync.py``.

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


def _count_tensor_sends(log: dict) -> None:
    """Bytes this process sends as tensors point to point (``dist.send``)."""
    send = dist.send

    def counted(tensor, *args, **kwargs):
        log["tensor_bytes"] += tensor.numel() * tensor.element_size()
        return send(tensor, *args, **kwargs)

    dist.send = counted


def _stage1_bytes(hf_model) -> int:
    """fp32 bytes of the second stage's HF tensors (2 layers over 2 stages)."""
    second = ("model.layers.1.", "model.norm.", "lm_head.")
    named = hf_model.state_dict().items()
    return sum(4 * t.numel() for name, t in named if name.startswith(second))


def _sync_worker(rank, world, tp, pp):
    from megatron.core import parallel_state as ps

    from megatron_fork.models.hf_mapping import Qwen3Layout
    from megatron_fork.models.qwen3 import build_qwen3_model
    from megatron_fork.rollout.torch_engine import TorchRolloutEngine
    from megatron_fork.trainer.weight_sync import sync_weights

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
    log = {"tensor_bytes": 0}
    _count_tensor_sends(log)

    for version in (1, 2):
        log["tensor_bytes"] = 0
        sync_weights(model, layout, engine, version, BUCKET_BYTES)
        if pp == 2 and rank == 1:  # the second stage's leader: its weights went as tensors
            assert log["tensor_bytes"] == _stage1_bytes(tiny_qwen3_model()), log
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
