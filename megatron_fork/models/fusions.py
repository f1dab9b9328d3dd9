"""Megatron-Core's fused kernels, switched on where the machine has them.

megatron-core 0.16.1 defaults every fusion to False (``model_parallel_config.py:168``,
``transformer/transformer_config.py:354,368,371``); Megatron-LM turns them on from its command
line. A model built for a GPU gets (``gpu_fusions``):

- ``bias_activation_fusion``: SwiGLU as one autograd function (``fusions/fused_bias_swiglu.py``)
  that saves only its [gate | up] input, where the unfused ``silu(gate) * (up + offset)`` also
  keeps silu(gate) and the offset copy of up (4f bytes a token more in bf16, 36% of a Qwen3-8B
  layer's activations: the planner's ``swiglu_activation``).
- ``bias_dropout_fusion``: the residual add with (zero) dropout fused.

  Both are ``torch.compile``d (``megatron/core/jit.py``: ``jit_fuser = torch.compile`` on torch
  >= 2.2): Inductor compiles them on each rank's first use (Triton, in the NGC image), again
  for no-grad passes and when sequence lengths make shapes dynamic, so the first steps are
  slower; the Slurm recipes give each rank one compile worker (``TORCHINDUCTOR_COMPILE_THREADS``).
- ``apply_rope_fusion``: Transformer Engine's fused RoPE (the config refuses it without TE,
  ``transformer_config.py:1530-1552``).
- ``gradient_accumulation_fusion``: weight gradients accumulated straight into the fp32
  ``main_grad`` (TE linears: ``fuse_wgrad_accumulation``); Megatron's own
  ``ColumnParallelLinear`` (the output layer) then needs Apex's ``fused_weight_gradient_mlp_cuda``
  and raises at build without it (``tensor_parallel/layers.py:924-933``), so it is on only where
  both TE and that kernel import.

Left off: ``masked_softmax_fusion`` (TE's flash attention has no separate softmax; the local
spec's fused softmax needs Apex) and ``persist_layer_norm`` (Apex LayerNorm only; torch norms
assert it is off, ``transformer/torch_norm.py:30``). On the CPU backend every fusion stays off
(``backends.cpu.config.CPU_TRANSFORMER_OVERRIDES``).
"""

import importlib.util

from megatron.core.models.gpt.gpt_layer_specs import HAVE_TE

from megatron_fork.backends.cpu.config import CPU_TRANSFORMER_OVERRIDES


def model_fusions(on_cpu: bool) -> dict:
    """The fusion fields (and CPU placement) of a model built for the CPU backend or a GPU."""
    if on_cpu:
        return dict(CPU_TRANSFORMER_OVERRIDES)
    return gpu_fusions(HAVE_TE, wgrad_kernel_available())


def gpu_fusions(have_te: bool, have_wgrad_kernel: bool) -> dict:
    """``TransformerConfig`` fusion fields for a GPU model, given what imports there."""
    return {
        "bias_activation_fusion": True,
        "bias_dropout_fusion": True,
        "apply_rope_fusion": have_te,
        "gradient_accumulation_fusion": have_te and have_wgrad_kernel,
    }


GPU_FUSION_FIELDS = tuple(gpu_fusions(have_te=True, have_wgrad_kernel=True))
"""The fusions a GPU model may have on."""


def wgrad_kernel_available() -> bool:
    """Whether Apex's fused weight-gradient accumulation kernel imports (as Megatron checks)."""
    return importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None
