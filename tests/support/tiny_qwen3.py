"""A tiny Qwen3 configuration for tests (random weights; no hub)."""

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM


def tiny_qwen3_config(
    tie: bool = False, vocab_size: int = 60, num_key_value_heads: int = 2
) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=vocab_size,  # 60: padded to 64 at TP=2 with a multiple of 16
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=num_key_value_heads,
        head_dim=16,  # != hidden / heads, as in real Qwen3
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie,
    )


def tiny_qwen3_model(seed: int = 0, **config_kwargs) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(tiny_qwen3_config(**config_kwargs)).eval()
