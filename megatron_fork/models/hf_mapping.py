"""The one mapping between a Megatron-Core GPTModel (any TP/PP) and Hugging Face Qwen3 weights.

Names and layouts: Megatron fuses Q, K and V into ``linear_qkv`` grouped per key/value head
([ng, (heads/ng + 2) * head_dim, hidden]: a group's query heads, then its key, then its value)
and gate/up into ``linear_fc1`` ([gate; up]); it pads the vocabulary for TP; it numbers layers
per pipeline stage. Everything else is a rename. Weight sync to rollout engines and checkpoint
conversion both go through this module, so the mapping lives in one place.

Tensors are streamed one parameter at a time (an all-gather over TP for each), so exporting
holds one full parameter at a time plus the caller's bucket.
"""

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch

from megatron_fork.models.tp_sharding import gather_full, shard_for_rank


@dataclass(frozen=True)
class Qwen3Layout:
    """The sizes the layout conversions need."""

    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    hf_vocab_size: int
    tie_embeddings: bool

    @classmethod
    def from_hf_config(cls, hf_config) -> "Qwen3Layout":
        heads = hf_config.num_attention_heads
        return cls(
            num_attention_heads=heads,
            num_query_groups=hf_config.num_key_value_heads,
            head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads,
            hf_vocab_size=hf_config.vocab_size,
            tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        )


@dataclass(frozen=True)
class _Rule:
    hf_names: tuple[str, ...]
    """HF name templates (``{layer}`` is the global layer index)."""
    to_hf: Callable
    """(full Megatron tensor, layout) -> tuple of HF tensors."""
    to_megatron: Callable
    """(tuple of HF tensors, layout, full Megatron shape) -> full Megatron tensor."""


def _same(tensor, layout):
    return (tensor,)


def _same_back(tensors, layout, shape):
    return tensors[0]


def _unpad_vocab(tensor, layout):  # [V_padded, h] -> [V, h]
    return (tensor[: layout.hf_vocab_size],)


def _pad_vocab(tensors, layout, shape):  # [V, h] -> [V_padded, h], zero rows
    padded = tensors[0].new_zeros(shape)
    padded[: tensors[0].shape[0]] = tensors[0]
    return padded


def _split_qkv(tensor, layout):  # [ng * (hpg + 2) * hd, h] -> q [heads*hd, h], k, v [ng*hd, h]
    ng, hd = layout.num_query_groups, layout.head_dim
    hpg = layout.num_attention_heads // ng
    grouped = tensor.view(ng, hpg + 2, hd, -1)
    q = grouped[:, :hpg].reshape(ng * hpg * hd, -1)
    return q, grouped[:, hpg].reshape(ng * hd, -1), grouped[:, hpg + 1].reshape(ng * hd, -1)


def _merge_qkv(tensors, layout, shape):
    q, k, v = tensors
    ng, hd = layout.num_query_groups, layout.head_dim
    hpg = layout.num_attention_heads // ng
    hidden = q.shape[-1]
    grouped = torch.cat(
        [q.view(ng, hpg, hd, hidden), k.view(ng, 1, hd, hidden), v.view(ng, 1, hd, hidden)], dim=1
    )
    return grouped.reshape(shape)


def _split_gate_up(tensor, layout):  # [2 * ffn, h] -> gate, up
    return tuple(tensor.chunk(2, dim=0))


def _merge_gate_up(tensors, layout, shape):
    return torch.cat(tensors, dim=0)


_RENAME = (_same, _same_back)
_LAYER_RULES = {  # Megatron suffix after "decoder.layers.{i}." -> rule
    "input_layernorm.weight": ("input_layernorm.weight",) + _RENAME,
    "self_attention.linear_qkv.layer_norm_weight": ("input_layernorm.weight",) + _RENAME,
    "self_attention.linear_qkv.weight": (
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
        _split_qkv,
        _merge_qkv,
    ),
    "self_attention.q_layernorm.weight": ("self_attn.q_norm.weight",) + _RENAME,
    "self_attention.k_layernorm.weight": ("self_attn.k_norm.weight",) + _RENAME,
    "self_attention.linear_proj.weight": ("self_attn.o_proj.weight",) + _RENAME,
    "pre_mlp_layernorm.weight": ("post_attention_layernorm.weight",) + _RENAME,
    "mlp.linear_fc1.layer_norm_weight": ("post_attention_layernorm.weight",) + _RENAME,
    "mlp.linear_fc1.weight": (
        ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
        _split_gate_up,
        _merge_gate_up,
    ),
    "mlp.linear_fc2.weight": ("mlp.down_proj.weight",) + _RENAME,
}
_MODEL_RULES = {
    "embedding.word_embeddings.weight": ("model.embed_tokens.weight", _unpad_vocab, _pad_vocab),
    "decoder.final_layernorm.weight": ("model.norm.weight",) + _RENAME,
    "output_layer.weight": ("lm_head.weight", _unpad_vocab, _pad_vocab),
}
_LAYER_NAME = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def _rule_for(megatron_name: str, layer_offset: int, layout: Qwen3Layout) -> _Rule:
    """The rule for one local Megatron parameter, with HF names for its global layer."""
    match = _LAYER_NAME.match(megatron_name)
    if match:
        entry, prefix = _LAYER_RULES.get(match.group(2)), "model.layers.{layer}."
        layer = int(match.group(1)) + layer_offset
    else:
        entry, prefix, layer = _MODEL_RULES.get(megatron_name), "", None
    if entry is None:
        raise KeyError(f"no Hugging Face mapping for Megatron parameter {megatron_name!r}")
    names, to_hf, to_megatron = entry
    names = (names,) if isinstance(names, str) else names
    names = tuple((prefix + n).format(layer=layer) for n in names)
    if megatron_name == "output_layer.weight" and layout.tie_embeddings:
        names = ("model.embed_tokens.weight",)  # a tied output layer is the embedding
    return _Rule(names, to_hf, to_megatron)


def _local_parameters(model) -> Iterator[tuple[str, torch.nn.Parameter]]:
    module = getattr(model, "module", model)  # a DDP wrapper holds the model in .module
    return module.named_parameters()


def _exported_rules(model, layout: Qwen3Layout, layer_offset: int):
    for name, param in _local_parameters(model):
        if name == "output_layer.weight" and layout.tie_embeddings:
            continue
        yield param, _rule_for(name, layer_offset, layout)


def stage_hf_names(model, layout: Qwen3Layout, layer_offset: int = 0) -> list[str]:
    """The HF names ``iter_hf_weights`` yields for this stage, in order (no collective)."""
    return [n for _, rule in _exported_rules(model, layout, layer_offset) for n in rule.hf_names]


def iter_hf_weights(
    model, layout: Qwen3Layout, tp_group=None, layer_offset: int = 0
) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) for every parameter of this pipeline stage, TP shards gathered.

    Every TP rank of the stage must iterate (each parameter is one all-gather); all of them get
    the same tensors. A tied output layer on the last stage is skipped (HF has only the
    embedding). Unsplit parameters (TP=1, norms) come out as views of the live weights: a
    consumer that keeps a tensor past the next optimizer step must copy it.
    """
    for param, rule in _exported_rules(model, layout, layer_offset):
        hf_tensors = rule.to_hf(gather_full(param, tp_group), layout)
        yield from zip(rule.hf_names, hf_tensors, strict=True)


def load_hf_weights_(
    model,
    hf_weights: Mapping[str, torch.Tensor],
    layout: Qwen3Layout,
    tp_rank: int = 0,
    tp_size: int = 1,
    layer_offset: int = 0,
    on_param: Callable[[str], None] | None = None,
) -> None:
    """Copy HF-named tensors into this rank's Megatron parameters (its TP shard, its stage),
    one parameter at a time (``hf_weights`` may read lazily); ``on_param(name)`` after each."""
    with torch.no_grad():
        for name, param in _local_parameters(model):
            rule = _rule_for(name, layer_offset, layout)
            missing = [n for n in rule.hf_names if n not in hf_weights]
            if missing:
                raise KeyError(f"Megatron {name!r} needs {missing} from the Hugging Face weights")
            full_shape = _full_shape(param, tp_size)
            full = rule.to_megatron(tuple(hf_weights[n] for n in rule.hf_names), layout, full_shape)
            shard = shard_for_rank(full, param, tp_rank, tp_size)
            if shard.shape != param.shape:
                raise ValueError(
                    f"{name}: the Hugging Face weights give {tuple(shard.shape)} on this rank, "
                    f"the model has {tuple(param.shape)}: do the configs match?"
                )
            param.copy_(shard)
            if on_param is not None:
                on_param(name)


def _full_shape(param, tp_size: int) -> torch.Size:
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= tp_size
    return torch.Size(shape)


def size_bounded_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group (name, tensor) pairs into lists of at most ``bucket_bytes`` (a larger tensor goes
    alone), keeping the stream's order, so a sender holds one bucket at a time."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    bucket, size = [], 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket
