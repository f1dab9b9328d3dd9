"""Qwen3 on Megatron-Core: the GPTModel sizes a Hugging Face ``Qwen3Config`` describes.

Qwen3 is GQA attention with RMSNorm on queries and keys (qk-layernorm), RMSNorm, SwiGLU, RoPE
and no linear biases. The vocabulary is padded to a multiple of ``vocab_multiple * TP`` (as
Megatron does); the loss leaves the padding out (``ForkingLossConfig.vocab_size``).
"""

import math

from megatron_fork.models.gpt import GPTShape, build_gpt_model


def _rope_theta(hf_config) -> float:
    theta = getattr(hf_config, "rope_theta", None)
    if theta is None:  # transformers >= 5 keeps it in rope_parameters
        theta = (getattr(hf_config, "rope_parameters", None) or {}).get("rope_theta")
    if theta is None:
        raise ValueError("the Qwen3 config has no rope_theta (nor rope_parameters.rope_theta).")
    return float(theta)


def _check_supported(hf_config) -> None:
    rope = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None)
    rope_type = (rope or {}).get("rope_type", (rope or {}).get("type", "default"))
    problems = {
        "hidden_act": (hf_config.hidden_act, "silu"),
        "attention_bias": (getattr(hf_config, "attention_bias", False), False),
        "rope type": (rope_type, "default"),
    }
    for name, (value, expected) in problems.items():
        if value != expected:
            raise ValueError(
                f"unsupported Qwen3 config: {name} is {value!r}, only {expected!r} is mapped "
                "onto Megatron here."
            )


def padded_vocab_size(vocab_size: int, tensor_parallel_size: int, vocab_multiple: int) -> int:
    """The smallest multiple of ``vocab_multiple * TP`` that holds the vocabulary."""
    multiple = vocab_multiple * tensor_parallel_size
    return math.ceil(vocab_size / multiple) * multiple


def qwen3_shape(hf_config, tensor_parallel_size: int = 1, vocab_multiple: int = 128) -> GPTShape:
    """The Megatron sizes of a Hugging Face ``Qwen3Config`` (vocabulary padded for TP)."""
    _check_supported(hf_config)
    return GPTShape(
        vocab_size=padded_vocab_size(hf_config.vocab_size, tensor_parallel_size, vocab_multiple),
        hidden_size=hf_config.hidden_size,
        num_layers=hf_config.num_hidden_layers,
        num_attention_heads=hf_config.num_attention_heads,
        num_query_groups=hf_config.num_key_value_heads,
        ffn_hidden_size=hf_config.intermediate_size,
        head_dim=getattr(hf_config, "head_dim", None),
        max_sequence_length=hf_config.max_position_embeddings,
        rotary_base=_rope_theta(hf_config),
        norm_epsilon=hf_config.rms_norm_eps,
        tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
    )


def build_qwen3_model(
    hf_config,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    vocab_multiple: int = 128,
    **build_kwargs,
):
    """This rank's part of a Megatron GPTModel for ``hf_config`` (parallel state initialised).
    ``build_kwargs`` go to ``build_gpt_model`` (pre/post_process, params_dtype, on_cpu, ...)."""
    shape = qwen3_shape(hf_config, tensor_parallel_size, vocab_multiple)
    return build_gpt_model(shape, tensor_parallel_size, pipeline_parallel_size, **build_kwargs)
