"""The kit's base model: a randomly initialised Hugging Face Qwen3 with a recipe's widths
(hidden, heads, key/value heads, head size, SwiGLU width) but ``KIT_LAYERS`` layers and a
``KIT_VOCAB`` vocabulary, saved in bf16 with the synthetic task's tokenizer (whose pad and end
ids, 0 and 1, the config names). Hugging Face's initialisation (std 0.02) gives logits with a
spread of about 1.3: a random model peaked enough that an engine without the trainer's
weights (sglang's dummy weights are within +-1e-3, near-uniform log-probs) shows a log-prob
difference of about a nat."""

from pathlib import Path

from megatron_fork.planning import ModelSize


def kit_hf_config(size: ModelSize, layers: int, vocab: int):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab,
        hidden_size=size.hidden_size,
        intermediate_size=size.ffn_hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_query_groups,
        head_dim=size.head_dim,
        tie_word_embeddings=size.tie_embeddings,
        max_position_embeddings=4096,
        pad_token_id=0,  # the synthetic task tokenizer's <|endoftext|>
        eos_token_id=1,  # and its <|im_end|>
        bos_token_id=None,
    )


def write_random_qwen3(out: Path, size: ModelSize, layers: int, vocab: int, seed: int = 0) -> Path:
    """``out``: config.json, bf16 safetensors, tokenizer.json; written whole or not at all."""
    import torch
    from transformers import Qwen3ForCausalLM

    from megatron_fork.atomic_files import directory_written_atomically
    from megatron_fork.data.tokenizer import build_and_save

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(kit_hf_config(size, layers, vocab)).to(torch.bfloat16)
    with directory_written_atomically(out) as tmp:
        model.save_pretrained(tmp)
        build_and_save(tmp)
    return Path(out)
