"""Qwen3 from a Hugging Face config on Megatron, and the HF <-> Megatron weight mapping.

A real ``Qwen3ForCausalLM`` (random weights, saved as safetensors) is loaded into Megatron
GPTModels at TP=1, TP=2, PP=2 and TP2xPP2 through the mapping; the Megatron model must give the
same logits (and, through the real pipeline schedule, the same log-probs and entropies) as the
HF model, and exporting back must reproduce every HF tensor exactly.

Multi-rank tests assert inside each rank's worker (``_..._worker``); ``run_distributed``
re-raises the first failing rank's error in the test.
"""

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_fork.models.hf_mapping import Qwen3Layout, size_bounded_buckets
from megatron_fork.models.qwen3 import padded_vocab_size, qwen3_shape
from tests.support.distributed import run_distributed
from tests.support.megatron_setup import gather_vocab, init_megatron
from tests.support.reference import logprob_entropy, relative_error
from tests.support.tiny_qwen3 import tiny_qwen3_config, tiny_qwen3_model

VOCAB_MULTIPLE = 16
BATCH, SEQ = 2, 12
RTOL = 1e-5


def _hf_config(tie: bool = False):
    return tiny_qwen3_config(tie)


def _mapping_worker(rank, world, tp, pp, tie, data_dir):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    from megatron_fork.models.hf_mapping import iter_hf_weights, load_hf_weights_
    from megatron_fork.models.qwen3 import build_qwen3_model
    from tests.support.megatron_logits import trainer_logprob_entropy

    init_megatron(tp=tp, pp=pp, seed=0)
    hf_config = _hf_config(tie)
    hf_weights = load_file(f"{data_dir}/model.safetensors")
    expected = torch.load(f"{data_dir}/expected.pt", weights_only=True)
    model = build_qwen3_model(
        hf_config,
        tp,
        pp,
        vocab_multiple=VOCAB_MULTIPLE,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
    )
    layout = Qwen3Layout.from_hf_config(hf_config)
    tp_rank, tp_group = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_group()
    offset = get_transformer_layer_offset(model.config)
    load_hf_weights_(model, hf_weights, layout, tp_rank, tp, offset)

    # Same outputs as the HF model.
    tokens, target = expected["tokens"], expected["target"]
    positions = torch.arange(SEQ).expand(BATCH, SEQ)
    if pp == 1:
        logits = gather_vocab(model(tokens, positions, None, labels=None), tp_group)
        assert torch.equal(logits[..., hf_config.vocab_size :], torch.zeros_like(logits[..., 60:]))
        error = relative_error(logits[..., : hf_config.vocab_size], expected["logits"])
        assert error <= RTOL, f"logits differ from HF: relative error {error:.2e}"
    outputs = trainer_logprob_entropy(model, tokens, target, hf_config.vocab_size)
    if outputs is not None:  # last stage: padding is left out, so these match HF's
        assert relative_error(outputs[0], expected["logprob"]) <= RTOL
        assert relative_error(outputs[1], expected["entropy"]) <= RTOL

    # Exporting gives back every HF tensor exactly, each stage its own part.
    exported = dict(iter_hf_weights(model, layout, tp_group, offset))
    for name, tensor in exported.items():
        assert torch.equal(tensor, hf_weights[name]), f"{name} differs after export"
    names = [None] * world
    dist.all_gather_object(names, sorted(exported))
    assert set().union(*map(set, names)) == set(hf_weights), "export does not cover HF's names"


def _write_hf_model(data_dir, tie):
    hf_model = tiny_qwen3_model(seed=0, tie=tie)
    weights = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    if tie:
        weights.pop("lm_head.weight", None)  # saved once, as HF does for tied weights
    save_file(weights, str(data_dir / "model.safetensors"))
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 60, (BATCH, SEQ), generator=gen)
    target = torch.randint(0, 60, (BATCH, SEQ), generator=gen)
    with torch.no_grad():
        logits = hf_model(tokens).logits  # [b, s, V]
    logprob, entropy = logprob_entropy(logits.double(), target)
    expected = dict(tokens=tokens, target=target, logits=logits, logprob=logprob, entropy=entropy)
    torch.save(expected, data_dir / "expected.pt")


@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_hf_weights_run_identically_in_megatron_and_export_back(tmp_path, tp, pp):
    _write_hf_model(tmp_path, tie=False)
    run_distributed(_mapping_worker, tp * pp, tp, pp, False, str(tmp_path))


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)])
def test_tied_embeddings_map_both_ways(tmp_path, tp, pp):
    # At PP=2 the last stage holds Megatron's copy of the tied embedding as its output layer.
    _write_hf_model(tmp_path, tie=True)
    run_distributed(_mapping_worker, tp * pp, tp, pp, True, str(tmp_path))


def test_qwen3_shape_pads_vocabulary_for_tp():
    shape = qwen3_shape(_hf_config(), tensor_parallel_size=2, vocab_multiple=16)
    assert shape.vocab_size == 64 and shape.head_dim == 16 and shape.num_query_groups == 2
    assert padded_vocab_size(151936, 8, 128) == 152576  # Qwen3 at TP=8
    assert padded_vocab_size(151936, 1, 128) == 151936


def test_unsupported_qwen3_config_is_named():
    config = _hf_config()
    config.hidden_act = "gelu"
    with pytest.raises(ValueError, match="hidden_act"):
        qwen3_shape(config)


def test_buckets_are_size_bounded_and_keep_order():
    tensors = [(f"t{i}", torch.zeros(n)) for i, n in enumerate([10, 30, 5, 100, 1, 1])]
    buckets = list(size_bounded_buckets(tensors, bucket_bytes=160))  # 40 floats
    assert [name for bucket in buckets for name, _ in bucket] == [n for n, _ in tensors]
    for bucket in buckets:
        size = sum(t.numel() * 4 for _, t in bucket)
        assert size <= 160 or len(bucket) == 1  # an oversized tensor travels alone
    # bytes 40, 120, 20, 400, 4, 4: [40+120=160], [20] (+400 would pass 160), [400], [4+4]
    assert [len(b) for b in buckets] == [2, 1, 1, 2]
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(size_bounded_buckets(tensors, 0))


def test_layout_from_config():
    layout = Qwen3Layout.from_hf_config(_hf_config(tie=True))
    assert (layout.head_dim, layout.hf_vocab_size, layout.tie_embeddings) == (16, 60, True)
