"""Megatron's fused kernels on GPU models, off on the CPU backend, and the planner's count of
what the MLP keeps for backward measured on a real Megatron MLP, fused and unfused."""

import pytest
import torch

from megatron_fork.models import fusions
from megatron_fork.planning.activations import BlockShape, layer_parts
from tests.support.distributed import run_distributed

FUSION_FIELDS = (
    "bias_activation_fusion",
    "bias_dropout_fusion",
    "apply_rope_fusion",
    "gradient_accumulation_fusion",
)


def test_cpu_models_have_every_fusion_off():
    chosen = fusions.model_fusions(on_cpu=True)
    assert not any(chosen[name] for name in FUSION_FIELDS)
    assert chosen["masked_softmax_fusion"] is False and chosen["persist_layer_norm"] is False


@pytest.mark.parametrize(
    ("have_te", "have_kernel", "rope", "wgrad"),
    [(True, True, True, True), (True, False, True, False), (False, True, False, False)],
)
def test_gpu_models_get_the_fusions_their_machine_has(
    monkeypatch, have_te, have_kernel, rope, wgrad
):
    monkeypatch.setattr(fusions, "HAVE_TE", have_te)
    monkeypatch.setattr(fusions, "wgrad_kernel_available", lambda: have_kernel)
    chosen = fusions.model_fusions(on_cpu=False)
    assert chosen["bias_activation_fusion"] and chosen["bias_dropout_fusion"]
    assert chosen["apply_rope_fusion"] is rope  # TE's fused RoPE
    assert chosen["gradient_accumulation_fusion"] is wgrad  # TE + Apex's wgrad kernel
    assert "use_cpu_initialization" not in chosen


H, F, S, B = 16, 24, 5, 3


def _saved_bytes_per_token(module, x) -> float:
    """Bytes of distinct activation storages autograd keeps for backward in ``module(x)``, per
    token (x and the weights excluded: they exist anyway)."""
    storages = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        module(x)
    for tensor in (x, *module.parameters()):
        storages.pop(tensor.untyped_storage().data_ptr(), None)
    return sum(storages.values()) / (S * B)


def _mlp_worker(rank, world):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.mlp import MLP

    from megatron_fork.backends.cpu.config import CPU_TRANSFORMER_OVERRIDES
    from tests.support.megatron_setup import init_megatron

    init_megatron(seed=0)
    spec = get_gpt_layer_local_spec(normalization="RMSNorm").submodules.mlp.submodules
    block = BlockShape(H, 2, H, H, F, gated_mlp=True, qk_norm=True, dropout=False)
    x = torch.randn(S, B, H, requires_grad=True)  # [s, b, h], the MLP's (normalised) input
    for fused in (False, True):
        config = TransformerConfig(
            num_layers=1, hidden_size=H, num_attention_heads=2, ffn_hidden_size=F,
            gated_linear_unit=True, activation_func=torch.nn.functional.silu,
            add_bias_linear=False, **{**CPU_TRANSFORMER_OVERRIDES, "bias_activation_fusion": fused},
        )  # fmt: skip
        kept = _saved_bytes_per_token(MLP(config, spec), x)
        parts = layer_parts(block, S, flash=True, fused_swiglu=fused)
        names = ("swiglu_input", "swiglu_activation", "fc2_input")
        planned = sum(parts.get(name, (0, True))[0] for name in names) * 2  # bf16 -> fp32
        assert kept == planned, (fused, kept, planned)


def test_planner_counts_what_the_megatron_mlp_keeps_fused_and_unfused():
    run_distributed(_mlp_worker, 1)
