"""Packed (THD) sequences through the CPU model spec: a packed micro-batch computes what the same
samples compute unpacked (logits, log-probs, entropies, gradients), at TP=1 and TP=2, with and
without TE-style padded slots; no token attends across a sample boundary; unpacked input is
Megatron's ``DotProductAttention`` unchanged. The core attention itself is checked against an
independent per-sample reference (``torch`` SDPA)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from megatron_fork.models.gpt import GPTShape, build_gpt_model
from megatron_fork.ops import vocab_parallel_logprob_entropy
from tests.support.distributed import run_distributed
from tests.support.megatron_setup import gather_vocab, init_megatron

SHAPE = GPTShape(
    vocab_size=64,
    hidden_size=32,
    num_attention_heads=4,
    num_query_groups=2,
    head_dim=16,
    ffn_hidden_size=48,
    num_layers=2,
    max_sequence_length=64,
)
LENGTHS = (5, 9, 3, 7)
TOL = dict(rtol=0.0, atol=1e-5)


def _samples(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, SHAPE.vocab_size, (n,), generator=generator) for n in LENGTHS]


def _packed_params(lengths, slot_multiple: int | None = None):
    """PackedSeqParams for samples of ``lengths``; with ``slot_multiple``, each sample's slot is
    padded to a multiple of it (cu_seqlens_*_padded, as TE's CP / FP8 padding)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    slots = [-(-n // slot_multiple) * slot_multiple for n in lengths] if slot_multiple else None
    padded = torch.tensor([0, *slots]).cumsum(0).to(torch.int32) if slots else None
    max_len = max(slots or lengths)
    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu,
        cu_seqlens_kv=cu,
        cu_seqlens_q_padded=padded,
        cu_seqlens_kv_padded=padded,
        max_seqlen_q=max_len,
        max_seqlen_kv=max_len,
    )


def _slots(params) -> torch.Tensor:
    """Slot boundaries: cu_seqlens_q_padded when the slots are padded, else cu_seqlens_q."""
    padded = params.cu_seqlens_q_padded
    return params.cu_seqlens_q if padded is None else padded


def _starts(params) -> list[int]:
    return _slots(params)[:-1].tolist()


def _packed_length(params) -> int:
    return int(_slots(params)[-1])


def _pack(samples, params):
    """tokens [1, T] and position ids [1, T] (restarting at 0 per sample; padding rows 0)."""
    total = _packed_length(params)
    tokens = torch.zeros(1, total, dtype=torch.long)
    positions = torch.zeros(1, total, dtype=torch.long)
    for start, sample in zip(_starts(params), samples, strict=True):
        tokens[0, start : start + len(sample)] = sample
        positions[0, start : start + len(sample)] = torch.arange(len(sample))
    return tokens, positions


def _packed_rows(output, params):
    """[1, T, ...] -> per sample [len_i, ...] (real tokens only)."""
    return [output[0, s : s + n] for s, n in zip(_starts(params), LENGTHS, strict=True)]


def _unpacked_rows(output):
    """[B, S, ...] right-padded -> per sample [len_i, ...]."""
    return [output[i, :n] for i, n in enumerate(LENGTHS)]


def _forward_loss(model, tokens, positions, params, rows_of, targets, weights):
    """Per-sample logits (full vocabulary), log-probs and entropies of the real tokens, after
    backward of a weighted sum of log-probs and entropies over real tokens."""
    from megatron.core import parallel_state as ps

    tp_group = ps.get_tensor_model_parallel_group()
    model.zero_grad(set_to_none=True)
    logits = model(tokens, positions, None, packed_seq_params=params)  # [b, s, V/TP]
    rows = rows_of(logits)
    flat = torch.cat(rows)  # [N, V/TP]
    logprob, entropy = vocab_parallel_logprob_entropy(flat, targets, tp_group)  # [N], [N]
    ((logprob * weights[0]).sum() + (entropy * weights[1]).sum()).backward()
    full = [gather_vocab(r.detach(), tp_group) for r in rows]
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return full, logprob.detach(), entropy.detach(), grads


def _parity_worker(rank, world_size, slot_multiple):
    init_megatron(tp=world_size, seed=1)
    model = build_gpt_model(SHAPE, tensor_parallel_size=world_size)
    samples = _samples()
    n = sum(LENGTHS)
    generator = torch.Generator().manual_seed(2)
    targets = torch.randint(0, SHAPE.vocab_size, (n,), generator=generator)
    weights = torch.randn(2, n, generator=generator)

    batch = torch.zeros(len(samples), max(LENGTHS), dtype=torch.long)  # right-padded [B, S]
    for i, sample in enumerate(samples):
        batch[i, : len(sample)] = sample
    positions = torch.arange(max(LENGTHS)).expand_as(batch)
    reference = _forward_loss(model, batch, positions, None, _unpacked_rows, targets, weights)

    params = _packed_params(LENGTHS, slot_multiple)
    tokens, packed_positions = _pack(samples, params)
    rows_of = lambda out: _packed_rows(out, params)  # noqa: E731
    packed = _forward_loss(model, tokens, packed_positions, params, rows_of, targets, weights)

    for ref, got in zip(reference[0], packed[0], strict=True):
        torch.testing.assert_close(got, ref, **TOL)
    torch.testing.assert_close(packed[1], reference[1], **TOL)
    torch.testing.assert_close(packed[2], reference[2], **TOL)
    assert reference[3].keys() == packed[3].keys()
    for name, grad in reference[3].items():
        assert grad.abs().max() > 0, name  # every parameter takes part in the loss
        torch.testing.assert_close(packed[3][name], grad, **TOL, msg=name)


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("slot_multiple", [None, 4])
def test_packed_matches_unpacked_logits_logprobs_entropies_and_grads(world_size, slot_multiple):
    run_distributed(_parity_worker, world_size, slot_multiple)


def _boundary_worker(rank, world_size):
    init_megatron(tp=world_size, seed=1)
    model = build_gpt_model(SHAPE, tensor_parallel_size=world_size)
    params = _packed_params(LENGTHS)
    samples = _samples()
    changed = [torch.flip(samples[0], (0,)) % (SHAPE.vocab_size - 1) + 1, *samples[1:]]
    outputs = []
    for pack in (samples, changed):
        tokens, positions = _pack(pack, params)
        with torch.no_grad():
            outputs.append(
                _packed_rows(model(tokens, positions, None, packed_seq_params=params), params)
            )
    assert (outputs[0][0] - outputs[1][0]).abs().max() > 1e-3  # the changed sample moved
    for before, after in zip(outputs[0][1:], outputs[1][1:], strict=True):
        torch.testing.assert_close(after, before, rtol=0.0, atol=1e-6)


def test_no_token_attends_across_a_sample_boundary():
    run_distributed(_boundary_worker, 1)


def _reference_attention(q, k, v, lengths, starts, scale):
    """Independent reference: causal SDPA per sample, GQA by repeating k/v heads; zeros
    elsewhere. q [t, np, hn], k/v [t, ng, hn] -> [t, np * hn]."""
    out = torch.zeros(q.size(0), q.size(1) * q.size(2))
    repeat = q.size(1) // k.size(1)
    for start, n in zip(starts, lengths, strict=True):
        rows = slice(start, start + n)
        qs, ks, vs = (x[rows].transpose(0, 1) for x in (q, k, v))  # [heads, n, hn]
        ks, vs = ks.repeat_interleave(repeat, 0), vs.repeat_interleave(repeat, 0)
        ctx = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)
        out[rows] = ctx.transpose(0, 1).reshape(n, out.size(1))
    return out


def _attention_modules():
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_fork.models.fusions import model_fusions
    from megatron_fork.models.packed_attention import PackedDotProductAttention

    config = TransformerConfig(
        num_layers=1,
        hidden_size=32,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=16,
        attention_dropout=0.0,
        **model_fusions(on_cpu=True),
    )
    return tuple(
        cls(config, 1, AttnMaskType.causal, "self")
        for cls in (PackedDotProductAttention, DotProductAttention)
    )


def _core_attention_worker(rank, world_size):
    init_megatron(seed=3)
    packed_attention, megatron_attention = _attention_modules()
    # 7, 6 and 6 share a bucket (one padded batch); 9, 2 and 30 run alone
    cases = [(LENGTHS, None), (LENGTHS, 4), ((5, 0, 3), 4), ((7, 2, 6, 30, 6, 9), None)]
    for lengths, slot_multiple in cases:
        params = _packed_params(lengths, slot_multiple)
        t = _packed_length(params)
        q, k, v = torch.randn(t, 4, 16), torch.randn(t, 2, 16), torch.randn(t, 2, 16)
        got = packed_attention(q, k, v, None, packed_seq_params=params)  # [t, 64]
        want = _reference_attention(q, k, v, lengths, _starts(params), 16**-0.5)
        torch.testing.assert_close(got, want, rtol=0.0, atol=1e-6)
        got_4d = packed_attention(
            *(x.unsqueeze(1) for x in (q, k, v)), None, packed_seq_params=params
        )  # [t, 1, 64]
        torch.testing.assert_close(got_4d.squeeze(1), got, rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match="packed length"):  # cu_seqlens must cover the pack
        packed_attention(q[:-1], k[:-1], v[:-1], None, packed_seq_params=params)
    with pytest.raises(ValueError, match="attention_mask=None"):
        packed_attention(q, k, v, torch.ones(1, 1, t, t, dtype=torch.bool), None, None, params)
    from megatron.core.transformer.enums import AttnMaskType

    with pytest.raises(ValueError, match="causal only"):  # bucket padding relies on causality
        packed_attention(q, k, v, None, AttnMaskType.no_mask, None, params)
    with pytest.raises(ValueError, match="qkv_format='thd'"):  # RoPE would span the pack
        sbhd = dataclasses.replace(params, qkv_format="sbhd")
        packed_attention(q, k, v, None, packed_seq_params=sbhd)
    # Unpacked: Megatron's DotProductAttention, bit for bit.
    q, k, v = torch.randn(9, 3, 4, 16), torch.randn(9, 3, 2, 16), torch.randn(9, 3, 2, 16)
    assert torch.equal(packed_attention(q, k, v, None), megatron_attention(q, k, v, None))


def test_core_attention_matches_per_sample_reference_and_megatron_unpacked():
    run_distributed(_core_attention_worker, 1)


def test_length_buckets_by_hand():
    """Longest first; a sample joins the bucket while >= 0.8 x its longest; empty ones drop."""
    from megatron_fork.models.packed_attention import length_buckets

    spans = [(0, 7, 7), (7, 2, 9), (9, 6, 15), (15, 30, 45), (45, 0, 45), (45, 6, 51), (51, 9, 60)]
    # 7 < 0.8 x 9 starts a bucket; 6 >= 0.8 x 7 joins it
    assert length_buckets(spans) == [[(15, 30)], [(51, 9)], [(0, 7), (9, 6), (45, 6)], [(7, 2)]]
