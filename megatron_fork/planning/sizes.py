"""Sizes of a Qwen3 dense decoder, and the published Qwen3-8B/14B/32B configurations.

A Qwen3 block (Hugging Face ``Qwen3DecoderLayer``): RMSNorm -> q/k/v projections (no bias, GQA,
``head_dim`` per head) -> per-head RMSNorm on q and k (``q_norm``/``k_norm``, ``head_dim``
weights each) -> RoPE -> attention -> o projection; RMSNorm -> SwiGLU MLP (gate, up, down).
The model adds the token embedding, a final RMSNorm and an output layer (unless tied).
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ModelSize:
    """The shape of a Qwen3 dense decoder (the fields of its Hugging Face config.json)."""

    hidden_size: int
    """h: width of the residual stream (``hidden_size``)."""
    num_layers: int
    """L: transformer blocks (``num_hidden_layers``)."""
    num_attention_heads: int
    """a: query heads (``num_attention_heads``)."""
    num_query_groups: int
    """g: key/value heads, GQA (``num_key_value_heads``)."""
    head_dim: int
    """Width of one head (``head_dim``; Qwen3 sets it explicitly: 128, not h / a)."""
    ffn_hidden_size: int
    """f: SwiGLU intermediate width (``intermediate_size``)."""
    vocab_size: int
    """V: vocabulary rows of the embedding (``vocab_size``, before any TP padding)."""
    tie_embeddings: bool
    """Output layer shares the embedding (``tie_word_embeddings``)."""

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "tie_embeddings" and (not isinstance(value, int) or value < 1):
                raise ValueError(f"ModelSize.{f.name} must be a positive int, got {value!r}")
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"ModelSize.num_attention_heads {self.num_attention_heads} must be a multiple "
                f"of num_query_groups {self.num_query_groups} (GQA shares each k/v head)."
            )

    @property
    def q_size(self) -> int:
        """Width of all query heads: a * head_dim."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of all key (or value) heads: g * head_dim."""
        return self.num_query_groups * self.head_dim

    def layer_linear_parameters(self) -> int:
        """Weights of one block's matrices (q, k, v, o; gate, up, down): these split over TP."""
        h = self.hidden_size
        attention = h * self.q_size + 2 * h * self.kv_size + self.q_size * h
        return attention + 3 * h * self.ffn_hidden_size

    def layer_norm_parameters(self) -> int:
        """One block's norm weights (two RMSNorms of h, q_norm and k_norm of head_dim):
        replicated on every TP rank."""
        return 2 * self.hidden_size + 2 * self.head_dim

    def layer_parameters(self) -> int:
        return self.layer_linear_parameters() + self.layer_norm_parameters()

    def embedding_parameters(self) -> int:
        """V * h (unpadded)."""
        return self.vocab_size * self.hidden_size

    def output_layer_parameters(self) -> int:
        """V * h, or 0 when tied to the embedding."""
        return 0 if self.tie_embeddings else self.vocab_size * self.hidden_size

    def non_embedding_parameters(self) -> int:
        """Blocks + final norm (what model cards call "non-embedding parameters")."""
        return self.num_layers * self.layer_parameters() + self.hidden_size

    def parameters(self) -> int:
        """Exact parameter count, as ``sum(p.numel())`` of ``Qwen3ForCausalLM``."""
        return (
            self.non_embedding_parameters()
            + self.embedding_parameters()
            + self.output_layer_parameters()
        )

    def kv_cache_bytes_per_token(self, bytes_per_value: int = 2, tensor_parallel: int = 1) -> int:
        """2 (k and v) * L * kv heads on one GPU * head_dim * bytes. With TP above g, each GPU
        keeps one (replicated) k/v head, as sglang does."""
        local_groups = math.ceil(self.num_query_groups / tensor_parallel)
        return 2 * self.num_layers * local_groups * self.head_dim * bytes_per_value

    @classmethod
    def from_hf_config(cls, config: Mapping) -> "ModelSize":
        """From a Hugging Face Qwen3 ``config.json`` (as a dict)."""
        missing = [
            k
            for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")
            + ("intermediate_size", "vocab_size")
            if k not in config
        ]
        if missing:
            raise ValueError(f"Qwen3 config.json lacks {missing}: pass the model's config.json")
        heads = config["num_attention_heads"]
        return cls(
            hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"],
            num_attention_heads=heads,
            num_query_groups=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            ffn_hidden_size=config["intermediate_size"],
            vocab_size=config["vocab_size"],
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        )


def padded_vocab_size(vocab_size: int, tensor_parallel: int, multiple: int = 128) -> int:
    """Megatron's padded vocabulary: the smallest multiple of ``multiple * TP`` holding V (the
    same rule as ``megatron_fork.models.qwen3.padded_vocab_size``, without importing torch)."""
    step = multiple * tensor_parallel
    return -(-vocab_size // step) * step


def _qwen3(h: int, layers: int, heads: int, ffn: int) -> ModelSize:
    return ModelSize(h, layers, heads, 8, 128, ffn, 151936, False)


QWEN3_SIZES: dict[str, ModelSize] = {
    # Values from each model's Hugging Face config.json (Qwen/Qwen3-8B, -14B, -32B).
    "qwen3_8b": _qwen3(4096, 36, 32, 12288),  # 8,190,735,360 parameters
    "qwen3_14b": _qwen3(5120, 40, 40, 17408),  # 14,768,307,200 parameters
    "qwen3_32b": _qwen3(5120, 64, 64, 25600),  # 32,762,123,264 parameters
}
"""The base models of the paper, by recipe name."""
