"""A Megatron-Core GPTModel in the Qwen3 style: GQA, qk-layernorm, RMSNorm, SwiGLU, RoPE.

Flat arguments, so configs never leak into module constructors. The layer spec is Transformer
Engine's where TE is importable and the model is not built for the CPU backend, else the local
spec (which runs on the CPU backend and on GPUs). On a GPU, Megatron's fused kernels are on
where they import (``models.fusions``); on the CPU backend all are off.
"""

from dataclasses import dataclass, replace

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    HAVE_TE,
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer import TransformerConfig

from megatron_fork.models.fusions import model_fusions
from megatron_fork.models.packed_attention import PackedDotProductAttention


@dataclass(frozen=True)
class GPTShape:
    """Sizes of a Qwen3-style decoder."""

    vocab_size: int = 64
    """Vocabulary size; must divide by the TP size (pad it first)."""
    hidden_size: int = 32
    num_layers: int = 2
    num_attention_heads: int = 4
    num_query_groups: int = 2
    """GQA key/value heads."""
    ffn_hidden_size: int = 64
    head_dim: int | None = None
    """Attention head size (Megatron's kv_channels); None = hidden_size / num_attention_heads."""
    max_sequence_length: int = 64
    rotary_base: float = 1_000_000.0
    norm_epsilon: float = 1e-6
    tie_embeddings: bool = False


_INIT_METHODS = ("init_method", "output_layer_init_method", "embedding_init_method")


def _leave_uninitialised(tensor: torch.Tensor) -> None:
    """An init method that writes nothing. Megatron's ``perform_initialization=False`` would
    also skip setting the tensor-parallel attributes (partition dim, stride) of the weights,
    which the mapping, DDP and the optimizer read; this keeps them. On CPU the full-size
    scratch tensor Megatron initialises and splits stays untouched, so it costs no memory."""


def _layer_spec(use_te: bool):
    """TE's layer spec, or Megatron's local spec with a core attention that also takes packed
    (THD) sequences, which the local ``DotProductAttention`` refuses; unpacked, it is that."""
    if use_te:
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    attention = spec.submodules.self_attention
    attention = replace(
        attention,
        submodules=replace(attention.submodules, core_attention=PackedDotProductAttention),
    )
    return replace(spec, submodules=replace(spec.submodules, self_attention=attention))


def build_gpt_model(
    shape: GPTShape,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    context_parallel_size: int = 1,
    params_dtype: torch.dtype = torch.float32,
    on_cpu: bool = True,
    pre_process: bool = True,
    post_process: bool = True,
    calculate_per_token_loss: bool = False,
    initialize: bool = True,
    transformer_options: dict | None = None,
) -> GPTModel:
    """Build this rank's part of the model. Parallel state must already be initialised.
    ``initialize=False`` leaves the weights uninitialised, for a caller that loads all of them
    (it saves the time and the transient memory of random initialisation).
    ``transformer_options``: further ``TransformerConfig`` fields (sequence parallel,
    recomputation, bf16/FP8; ``trainer.megatron_options``)."""
    skip_init = {} if initialize else dict.fromkeys(_INIT_METHODS, _leave_uninitialised)
    use_te = HAVE_TE and not on_cpu
    if shape.vocab_size % tensor_parallel_size:
        raise ValueError(
            f"vocab_size {shape.vocab_size} must divide by the TP size {tensor_parallel_size}: "
            "pad the vocabulary to a multiple of it."
        )
    config = TransformerConfig(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        num_attention_heads=shape.num_attention_heads,
        num_query_groups=shape.num_query_groups,
        ffn_hidden_size=shape.ffn_hidden_size,
        kv_channels=shape.head_dim or shape.hidden_size // shape.num_attention_heads,
        normalization="RMSNorm",
        layernorm_epsilon=shape.norm_epsilon,
        qk_layernorm=True,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tensor_parallel_size,
        pipeline_model_parallel_size=pipeline_parallel_size,
        context_parallel_size=context_parallel_size,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        calculate_per_token_loss=calculate_per_token_loss,
        **skip_init,
        **model_fusions(on_cpu),
        **(transformer_options or {}),
    )
    return GPTModel(
        config=config,
        transformer_layer_spec=_layer_spec(use_te),
        vocab_size=shape.vocab_size,
        max_sequence_length=shape.max_sequence_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=shape.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=shape.rotary_base,
    )
