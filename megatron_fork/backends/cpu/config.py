"""TransformerConfig settings a model needs to run on the CPU backend.

Fused kernels (bias-activation, bias-dropout, masked softmax, RoPE, persistent layer norm,
gradient-accumulation fusion) are CUDA-only; weights are initialised on the CPU.
"""

CPU_TRANSFORMER_OVERRIDES: dict = {
    "use_cpu_initialization": True,
    "bias_activation_fusion": False,
    "bias_dropout_fusion": False,
    "masked_softmax_fusion": False,
    "gradient_accumulation_fusion": False,
    "persist_layer_norm": False,
    "apply_rope_fusion": False,
}
