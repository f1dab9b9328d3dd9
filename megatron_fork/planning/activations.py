"""Activation memory of one transformer layer, counted tensor by tensor.

Source: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"
(arXiv 2205.05198), Table 2; the same formulas are in Megatron-LM's
``megatron/training/theoretical_memory_usage.py`` ("Using formula in Table 2 of
https://arxiv.org/pdf/2205.05198.pdf"), whose per-layer ``18 + 4 * ffn / h`` is the paper's 34
written for any MLP width. For a GPT block (2-byte activations, 1-byte dropout masks) with
sequence s, micro-batch b, hidden h, heads a, TP size t, the paper's per-layer bytes are
    no parallelism                     s*b*h*(34 + 5*a*s/h)
    tensor parallel                    s*b*h*(10 + 24/t + 5*a*s/(h*t))
    tensor + sequence parallel         s*b*h/t*(34 + 5*a*s/h)
    tensor parallel + selective        s*b*h*(10 + 24/t)
    tensor + sequence + selective      34*s*b*h/t
    full recomputation                 2*s*b*h          (the layer input; /t with SP)
(``korthikanti_table2`` below). The 34 is 11 (attention) + 19 (MLP) + 4 (two LayerNorms):
    attention  QKV input 2h, Q and K 4h, V 2h, projection input 2h, dropout mask h     = 11h
               scores: softmax output 2as, dropout mask as, dropout output 2as          = 5as
    MLP        fc1 input 2h, GeLU input 8h, fc2 input 8h, dropout mask h               = 19h
    norms      two inputs of 2h                                                         = 4h
and without SP the 10h that TP does not split are the norm inputs (4h), the QKV and fc1
inputs (4h) and the two dropout masks (2h).

The same tensor-by-tensor count for a Qwen3 block (``layer_parts``, per token):
    norms          input_layernorm and pre_mlp_layernorm inputs                  4h
    qkv_input      fused norm+QKV linear saves the normalised input              2h
    qk_norm        q_norm / k_norm inputs (per-head RMSNorm on q and k)          2(q + kv)
    attention_qkv  q, k (after RoPE) and v, saved by the attention kernel       2(q + 2kv)
    attention_out  attention output = o-projection input                         2q
    softmax_stats  flash attention's fp32 log-sum-exp per head                  4a
    fc1_input      fused norm+fc1 linear saves the normalised input              2h
    swiglu_input   fc1 output [gate | up], 2f wide                               4f
    swiglu_activation  unfused SwiGLU only: silu(gate) and up + glu_linear_offset (a copy),
                   both kept by the product                                       4f
    fc2_input      SwiGLU output                                                 2f
with q = a*head_dim and kv = g*head_dim (GQA: k and v are g/a of q), no dropout (Qwen3 trains
with attention and hidden dropout 0) and flash attention, which stores no a*s^2 scores (without
it the scores cost 2as per token: the softmax output, kept for both its own backward and the
attention-over-V one). Qwen3-8B: 137,344 bytes/token = 33.5h; Qwen3-32B: 250,112 = 48.9h
(its f = 5h and q = 1.6h), with Megatron's fused SwiGLU (``bias_activation_fusion``, on for
every GPU model: ``models.fusions``); unfused (the CPU backend) a layer keeps 4f more per token
(measured on megatron-core 0.16.1's ``MLP``: ``tests/models/test_fusions.py``).
Norms, QKV and fc1 inputs split by t only with sequence parallel.
Recomputation as Megatron-Core does it: "full" keeps the layer input (2h, /t with SP);
"selective" drops what each of ``recompute_modules`` recomputes: core_attn the scores (with
flash attention only the log-sum-exp: Megatron itself warns it is not needed there),
layernorm the normalised inputs, mlp the SwiGLU tensors (keeping the fc1 input).
"""

from dataclasses import dataclass

from megatron_fork.planning.sizes import ModelSize

DROPPED_BY_MODULE = {
    "core_attn": ("attention_scores", "softmax_stats"),
    "layernorm": ("qkv_input", "fc1_input"),
    "mlp": ("swiglu_input", "swiglu_activation", "fc2_input"),
}
"""Parts of ``layer_parts`` that each Megatron ``recompute_modules`` entry recomputes."""


@dataclass(frozen=True)
class BlockShape:
    """What the activation count needs to know about a transformer block."""

    hidden_size: int
    """h."""
    num_attention_heads: int
    """a."""
    q_size: int
    """Width of all query heads (a * head_dim)."""
    kv_size: int
    """Width of all key (or value) heads (g * head_dim)."""
    ffn_hidden_size: int
    """f."""
    gated_mlp: bool
    """SwiGLU (fc1 is 2f wide) rather than GeLU."""
    qk_norm: bool
    """Per-head norms on q and k (Qwen3)."""
    dropout: bool
    """Dropout after attention scores, attention and MLP (1-byte masks), as in GPT-3."""


def qwen3_block(model: ModelSize) -> BlockShape:
    return BlockShape(
        model.hidden_size,
        model.num_attention_heads,
        model.q_size,
        model.kv_size,
        model.ffn_hidden_size,
        gated_mlp=True,
        qk_norm=True,
        dropout=False,
    )


def gpt_block(hidden_size: int, num_attention_heads: int) -> BlockShape:
    """The paper's GPT block: multi-head attention, GeLU MLP of 4h, dropout."""
    h = hidden_size
    return BlockShape(h, num_attention_heads, h, h, 4 * h, False, False, True)


def layer_parts(
    block: BlockShape, seq_len: int, flash: bool, fused_swiglu: bool = True
) -> dict[str, tuple[float, bool]]:
    """Bytes per token of each tensor a layer saves for backward -> (bytes, splits_by_tp),
    where splits_by_tp is False for tensors that only sequence parallelism splits.
    ``fused_swiglu``: Megatron's ``bias_activation_fusion`` (saves only its input)."""
    h, a, q, kv, f = (
        block.hidden_size,
        block.num_attention_heads,
        block.q_size,
        block.kv_size,
        block.ffn_hidden_size,
    )
    mask = 1 if block.dropout else 0  # 1-byte dropout masks
    parts = {
        "norms": (4 * h, False),
        "qkv_input": (2 * h, False),
        "qk_norm": (2 * (q + kv) if block.qk_norm else 0, True),
        "attention_qkv": (2 * (q + 2 * kv), True),
        "attention_scores": (0 if flash else (2 + 3 * mask) * a * seq_len, True),
        "softmax_stats": (4 * a if flash else 0, True),
        "attention_out": (2 * q, True),
        "attention_dropout": (mask * h, False),
        "fc1_input": (2 * h, False),
        "swiglu_input": (2 * f * (2 if block.gated_mlp else 1), True),
        "swiglu_activation": (4 * f if block.gated_mlp and not fused_swiglu else 0, True),
        "fc2_input": (2 * f, True),
        "mlp_dropout": (mask * h, False),
    }
    return {name: part for name, part in parts.items() if part[0]}


def layer_bytes_per_token(
    block: BlockShape,
    seq_len: int,
    tensor_parallel: int = 1,
    sequence_parallel: bool = False,
    recompute: str = "none",
    recompute_modules: tuple[str, ...] = (),
    flash: bool = True,
    fused_swiglu: bool = True,
) -> float:
    """Bytes one layer keeps per token (of the tokens this GPU's CP rank holds) until backward."""
    t = tensor_parallel
    if recompute == "full":
        return 2 * block.hidden_size / (t if sequence_parallel else 1)
    dropped = set()
    if recompute == "selective":
        dropped = {name for m in recompute_modules for name in DROPPED_BY_MODULE[m]}
    total = 0.0
    for name, (size, splits_by_tp) in layer_parts(block, seq_len, flash, fused_swiglu).items():
        if name not in dropped:
            total += size / (t if splits_by_tp or sequence_parallel else 1)
    return total


def korthikanti_table2(s: int, b: int, h: int, a: int, t: int) -> dict[str, float]:
    """Table 2 of Korthikanti et al. 2022: activation bytes per GPT layer."""
    sbh = s * b * h
    return {
        "no parallelism": sbh * (34 + 5 * a * s / h),
        "tensor parallel": sbh * (10 + 24 / t + 5 * a * s / (h * t)),
        "tensor + sequence parallel": sbh / t * (34 + 5 * a * s / h),
        "tensor parallel + selective": sbh * (10 + 24 / t),
        "tensor + sequence parallel + selective": 34 * sbh / t,
        "full recompute": 2 * sbh,
    }
