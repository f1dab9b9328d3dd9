"""Core attention for the local (non-TE) layer spec that honours packed sequences.

Megatron's local ``DotProductAttention`` refuses ``packed_seq_params`` (only TE's attention
takes THD input), so a CPU model could not train on packed micro-batches. This module is
``DotProductAttention`` with the same constructor and forward signature:

* ``packed_seq_params=None``: it is ``DotProductAttention.forward``, unchanged (same code, same
  numbers).
* packed input (``qkv_format='thd'``: q [t, np, hn], k/v [t, ng, hn], the layout
  ``Attention.forward`` hands the core attention after squeezing the dummy batch dimension; or
  4-D [t, 1, n, hn]): each sample ``i`` is the row slice ``[start_i, start_i + len_i)``, where the
  starts come from ``cu_seqlens_*_padded`` when given (TE's CP / FP8 padding: a sample's slot
  may be longer than its tokens) else from ``cu_seqlens_*``, and the lengths from
  ``cu_seqlens_*``. Samples of similar length run through ``DotProductAttention.forward`` as
  one padded batch (the module's mask type, causal for GPT; ``length_buckets``), each sample
  in its own row, so no token attends across a sample boundary and a packed sample computes
  what the same sample computes unpacked. Rows in padding slots get a
  zero output (TE leaves them unspecified; zero keeps them out of every gradient).

Costs about sum_i len_i^2 per head (up to 1.56x within a bucket), as TE's THD kernels do,
not t^2. Context parallelism is still
refused (the constructor's CP == 1 assertion), as in ``DotProductAttention``.
"""

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


def sample_spans(packed_seq_params: PackedSeqParams, rows: int) -> list[tuple[int, int, int]]:
    """(start, length, slot end) per sample: the sample's tokens are rows [start, start +
    length) of the packed tensor and its slot (tokens + padding) ends at ``slot end``.
    Query and key/value spans must agree (self-attention)."""
    cu_q, cu_kv = packed_seq_params.cu_seqlens_q, packed_seq_params.cu_seqlens_kv
    if cu_q is None or (cu_kv is not None and not torch.equal(cu_q, cu_kv)):
        raise ValueError("packed attention needs cu_seqlens_q, equal to cu_seqlens_kv")
    padded_q = packed_seq_params.cu_seqlens_q_padded
    padded_kv = packed_seq_params.cu_seqlens_kv_padded
    if padded_kv is not None and (padded_q is None or not torch.equal(padded_q, padded_kv)):
        raise ValueError("cu_seqlens_kv_padded must equal cu_seqlens_q_padded")
    slots = cu_q if padded_q is None else padded_q
    lengths = (cu_q[1:] - cu_q[:-1]).tolist()
    starts, ends = slots[:-1].tolist(), slots[1:].tolist()
    if len(starts) != len(lengths) or slots[-1].item() != rows:
        raise ValueError(
            f"cu_seqlens{'_q_padded' if padded_q is not None else '_q'} must end at the packed "
            f"length {rows} and have one entry per sample plus one"
        )
    for start, length, end in zip(starts, lengths, ends, strict=True):
        if length < 0 or start + length > end:
            raise ValueError(f"sample of {length} tokens does not fit its slot [{start}, {end})")
    return list(zip(starts, lengths, ends, strict=True))


class PackedDotProductAttention(DotProductAttention):
    """``DotProductAttention`` that also takes packed sequences (see the module docstring)."""

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> torch.Tensor:
        """Unpacked: q [sq, b, np, hn], k/v [sk, b, ng, hn] -> [sq, b, np * hn], as Megatron's.
        Packed: q [t, np, hn] (THD) or [t, 1, np, hn], k/v likewise with ng heads ->
        [t, np * hn] (THD) or [t, 1, np * hn]."""
        if packed_seq_params is None:
            return super().forward(
                query, key, value, attention_mask, attn_mask_type, attention_bias, None
            )
        if attention_mask is not None or attention_bias is not None:
            raise ValueError(
                "packed sequences take their mask from cu_seqlens: pass attention_mask=None"
            )
        if (attn_mask_type or self.attn_mask_type) != AttnMaskType.causal:
            raise ValueError(  # padding rows of a bucket rely on causal masking
                f"packed attention is causal only, got {attn_mask_type or self.attn_mask_type}"
            )
        if packed_seq_params.qkv_format != "thd":  # else RoPE ran over the whole pack
            raise ValueError(
                f"packed sequences need PackedSeqParams(qkv_format='thd'), got "
                f"{packed_seq_params.qkv_format!r}"
            )
        thd = query.dim() == 3
        if not thd and query.size(1) != 1:
            raise ValueError(f"packed 4-D input must have batch 1, got {tuple(query.shape)}")
        q, k, v = (x if thd else x.squeeze(1) for x in (query, key, value))  # [t, n, hn]
        out = q.new_zeros(q.size(0), self.hidden_size_per_partition)  # padding rows stay 0
        for bucket in length_buckets(sample_spans(packed_seq_params, q.size(0))):
            out = self._bucket_attention(q, k, v, bucket, attn_mask_type, out)
        return out if thd else out.unsqueeze(1)  # [t, np * hn]

    def _bucket_attention(self, q, k, v, bucket, attn_mask_type, out):
        """One bucket of samples as a padded batch [L, b] through ``DotProductAttention``:
        row i of sample j reads packed row start_j + i; rows past a sample's length read its
        first row and come after its real rows, so causal attention keeps them out of every
        real row, and their outputs are dropped."""
        starts = torch.tensor([start for start, _ in bucket], device=q.device)  # [b]
        lengths = torch.tensor([length for _, length in bucket], device=q.device)  # [b]
        offsets = torch.arange(bucket[0][1], device=q.device)  # [L], the longest first
        real = offsets < lengths[:, None]  # [b, L]
        index = torch.where(real, starts[:, None] + offsets, starts[:, None])  # [b, L]
        batched = [x[index].transpose(0, 1).contiguous() for x in (q, k, v)]  # [L, b, n, hn]
        context = super().forward(*batched, None, attn_mask_type)  # [L, b, np * hn]
        return out.index_put((index[real],), context.transpose(0, 1)[real])


BUCKET_LENGTH_RATIO = 0.8
"""Samples share a bucket while each is at least this fraction of the bucket's longest, so
the padding adds at most 1 / 0.8**2 ~ 1.56x to the bucket's attention; fewer buckets, fewer
calls: many short samples (the CPU demo's) run in a few batched calls, not one call each."""


def length_buckets(spans: list[tuple[int, int, int]]) -> list[list[tuple[int, int]]]:
    """(start, length) of the non-empty samples of ``sample_spans``, grouped longest first
    into buckets of similar length (``BUCKET_LENGTH_RATIO``)."""
    ordered = sorted(((start, n) for start, n, _ in spans if n > 0), key=lambda x: (-x[1], x[0]))
    buckets: list[list[tuple[int, int]]] = []
    for start, length in ordered:
        if buckets and length >= BUCKET_LENGTH_RATIO * buckets[-1][0][1]:
            buckets[-1].append((start, length))
        else:
            buckets.append([(start, length)])
    return buckets
