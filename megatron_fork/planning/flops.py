"""FLOPs of a transformer forward pass, counted matmul by matmul, and the published GPT forms.

A matmul of [m, n] x [n, k] costs 2mnk FLOPs; backward costs twice the forward (data and
weight gradients), so a training pass is 3 forwards (Megatron-LM's
``num_floating_point_operations``: "forward_backward_expansion_factor = 3"). For a GPT layer
(hidden h, sequence s, batch B) the forward is 24Bsh^2 (QKV, projection, 4h MLP) + 4Bs^2h
(QK^T and attention over V, no causal saving) and the logit layer 2BshV, which gives
    Korthikanti et al. 2022 (the model FLOPs behind their MFU; no recomputation):
        72 B s l h^2 (1 + s/(6h) + V/(12 l h))
    Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters
    Using Megatron-LM", Eq. (3), with full recomputation (4 passes through the layers, 3 through
    the logit layer):
        96 B s l h^2 (1 + s/(6h) + V/(16 l h))
and Narayanan's Eq. (2), P = 12 l h^2 (1 + 13/(12h) + (V + s)/(12 l h)) parameters.
(The 72 form is the one without recomputation; the 96 form is the one with it.)
For Qwen3 the layer matmuls are q, k, v, o (GQA widths) and the SwiGLU gate, up and down
(3hf), and causal attention costs half the s^2 work (as Megatron-LM counts it).
"""

from dataclasses import dataclass

from megatron_fork.planning.activations import BlockShape


def gpt_model_flops(batch: int, seq: int, layers: int, hidden: int, vocab: int) -> float:
    """Korthikanti et al. 2022: training FLOPs of a GPT step without recomputation."""
    return (
        72
        * batch
        * seq
        * layers
        * hidden**2
        * (1 + seq / (6 * hidden) + vocab / (12 * layers * hidden))
    )


def gpt_full_recompute_flops(batch: int, seq: int, layers: int, hidden: int, vocab: int) -> float:
    """Narayanan et al. 2021, Eq. (3): training FLOPs of a GPT step with full recomputation."""
    return (
        96
        * batch
        * seq
        * layers
        * hidden**2
        * (1 + seq / (6 * hidden) + vocab / (16 * layers * hidden))
    )


def gpt_parameters(layers: int, hidden: int, vocab: int, seq: int) -> float:
    """Narayanan et al. 2021, Eq. (2): parameters of a GPT model (learned positions, biases)."""
    correction = 13 / (12 * hidden) + (vocab + seq) / (12 * layers * hidden)
    return 12 * layers * hidden**2 * (1 + correction)


@dataclass(frozen=True)
class ForwardFlops:
    """Forward FLOPs of one sequence, by part."""

    attention_linear: float
    """q, k, v, o projections, all layers."""
    mlp: float
    """MLP matmuls, all layers."""
    attention_core: float
    """QK^T and attention over V, all layers."""
    logits: float
    """Output layer."""

    @property
    def layers(self) -> float:
        return self.attention_linear + self.mlp + self.attention_core

    @property
    def total(self) -> float:
        return self.layers + self.logits


def forward_flops(
    block: BlockShape, num_layers: int, vocab: int, seq: int, causal: bool = True
) -> ForwardFlops:
    """Forward FLOPs of one sequence of ``seq`` tokens."""
    h, q, kv, f = block.hidden_size, block.q_size, block.kv_size, block.ffn_hidden_size
    projections = 2 * seq * (h * q + 2 * h * kv + q * h)
    mlp = 2 * seq * h * f * (3 if block.gated_mlp else 2)
    core = 2 * 2 * seq * seq * q * (0.5 if causal else 1.0)
    return ForwardFlops(
        num_layers * projections, num_layers * mlp, num_layers * core, 2 * seq * h * vocab
    )


def packed_forward_flops(
    block: BlockShape, num_layers: int, vocab: int, tokens: float, attention_pairs: float
) -> ForwardFlops:
    """Forward FLOPs of packed sequences: the linear parts over ``tokens`` positions, causal
    attention over ``attention_pairs`` = sum of len**2 of the samples (attention stays within
    each sample). One sequence of s tokens: ``tokens=s, attention_pairs=s**2``."""
    per_token = forward_flops(block, num_layers, vocab, 1, causal=True)
    return ForwardFlops(
        tokens * per_token.attention_linear,
        tokens * per_token.mlp,
        attention_pairs * per_token.attention_core,  # 2 * 2 * len**2 * q * 0.5 per layer
        tokens * per_token.logits,
    )


def training_flops(
    fwd: ForwardFlops, recompute: str, recompute_modules: tuple[str, ...] = ()
) -> float:
    """FLOPs of forward + backward (3 forwards) plus what recomputation runs again."""
    again = 0.0
    if recompute == "full":
        again = fwd.layers
    elif recompute == "selective":
        again += fwd.attention_core if "core_attn" in recompute_modules else 0.0
        again += fwd.mlp if "mlp" in recompute_modules else 0.0
    return 3 * fwd.total + again
