"""The planner's formulas against their published sources: Megatron-LM's bytes per parameter
(dist_optimizer.md), Korthikanti et al. 2022's activation table, Narayanan et al. 2021's FLOPs
and parameter counts."""

import dataclasses

import pytest

from megatron_fork.planning import (
    ModelSize,
    TrainingLayout,
)
from megatron_fork.planning.activations import (
    gpt_block,
    korthikanti_table2,
    layer_bytes_per_token,
    qwen3_block,
)
from megatron_fork.planning.flops import (
    forward_flops,
    gpt_full_recompute_flops,
    gpt_model_flops,
    gpt_parameters,
    training_flops,
)
from megatron_fork.planning.memory import training_breakdown
from tests.planning.layouts import QWEN3_8B, SEQ
from tests.planning.layouts import layout as _layout


def test_megatron_distributed_optimizer_bytes_per_parameter():
    # docs/source/api-guide/dist_optimizer.md, "bf16 parameters, fp32 gradients": 18 / 6 + 12/d
    tiny = ModelSize(64, 2, 4, 2, 16, 128, 512, False)
    for distributed, d, per_param in ((False, 4, 18), (True, 4, 6 + 12 / 4), (True, 8, 7.5)):
        layout = TrainingLayout(1, 1, 1, d, False, "none", distributed, False, 1, 64)
        parts = training_breakdown(tiny, layout, 0)
        state = sum(
            v for k, v in parts.items() if k.split()[0] in {"weights", "gradients", "optimizer"}
        )
        assert state == pytest.approx(tiny.parameters() * per_param, abs=3)


def test_distributed_optimizer_shards_over_dp_times_cp():
    parts = training_breakdown(QWEN3_8B, _layout(), 0)
    assert parts["optimizer (fp32 master, Adam m, v)"] * 32 == pytest.approx(
        3 * parts["weights (bf16)"] * 2, abs=64
    )  # 12 bytes / (DP 16 x CP 2) against 2 bytes


def test_korthikanti_table2_gpt3_175b():
    # GPT-3 175B (Korthikanti et al. 2022, Table 3): a = 96, h = 12288, s = 2048, t = 8, b = 1.
    # s*b*h = 25,165,824; 5*a*s/h = 5*96*2048/12288 = 80
    table = korthikanti_table2(s=2048, b=1, h=12288, a=96, t=8)
    assert table["no parallelism"] == 25_165_824 * (34 + 80) == 2_868_903_936
    assert table["tensor parallel"] == 25_165_824 * (10 + 3 + 10) == 578_813_952
    assert table["tensor + sequence parallel"] == 25_165_824 / 8 * 114 == 358_612_992
    assert table["tensor parallel + selective"] == 25_165_824 * 13 == 327_155_712
    assert table["tensor + sequence parallel + selective"] == 34 * 25_165_824 / 8 == 106_954_752
    assert table["full recompute"] == 2 * 25_165_824 == 50_331_648
    # the paper's headline: sequence parallel + selective recomputation cut activations ~5x
    assert table["tensor parallel"] / table["tensor + sequence parallel + selective"] > 5


@pytest.mark.parametrize(
    "entry, sp, recompute",
    [
        ("no parallelism", False, "none"),
        ("tensor parallel", False, "none"),
        ("tensor + sequence parallel", True, "none"),
        ("tensor parallel + selective", False, "selective"),
        ("tensor + sequence parallel + selective", True, "selective"),
        ("full recompute", False, "full"),
    ],
)
def test_tensor_by_tensor_count_reproduces_korthikanti(entry, sp, recompute):
    s, h, a, t = 2048, 12288, 96, 8
    tp = 1 if entry == "no parallelism" else t
    per_token = layer_bytes_per_token(
        gpt_block(h, a), s, tp, sp, recompute, ("core_attn",), flash=False
    )
    assert per_token * s == korthikanti_table2(s, 1, h, a, t)[entry]


def test_megatron_theoretical_memory_form_for_any_mlp_width():
    # Megatron-LM theoretical_memory_usage.py: s*b*h*(18 + 4*ffn/h) / t (SP + selective)
    block = dataclasses.replace(gpt_block(1024, 16), ffn_hidden_size=3 * 1024)
    assert layer_bytes_per_token(block, 4096, 4, True, "selective", ("core_attn",), False) == (
        1024 * (18 + 4 * 3) / 4
    )


def test_qwen3_block_activation_bytes_by_hand():
    # Qwen3-8B per token: norms 4h 16,384; qkv input 2h 8,192; q_norm/k_norm inputs
    # 2*(4096 + 1024) 10,240; q, k, v 2*(4096 + 2*1024) 12,288; flash log-sum-exp 4*32 128;
    # attention out 2*4096 8,192; fc1 input 8,192; SwiGLU input 4*12288 49,152; fc2 input
    # 2*12288 24,576  ->  137,344 bytes = 33.53h (GPT's 34h, not 34h + 5as: flash attention)
    assert layer_bytes_per_token(qwen3_block(QWEN3_8B), SEQ) == 137_344
    assert layer_bytes_per_token(qwen3_block(QWEN3_8B), SEQ, 2, True) == 68_672
    full = layer_bytes_per_token(qwen3_block(QWEN3_8B), SEQ, 2, True, "full")
    assert full == 2 * 4096 / 2  # the layer input only
    mlp = layer_bytes_per_token(qwen3_block(QWEN3_8B), SEQ, 2, True, "selective", ("mlp",))
    assert mlp == 68_672 - (49_152 + 24_576) / 2


def test_gpt_flops_match_korthikanti_and_narayanan():
    b, s, layers, h, v = 1, 2048, 96, 12288, 51200  # GPT-3 175B
    fwd = forward_flops(gpt_block(h, 96), layers, v, s, causal=False)
    # Korthikanti et al. 2022: 72*B*s*l*h^2*(1 + s/(6h) + V/(12lh)) without recomputation
    assert training_flops(fwd, "none") == pytest.approx(
        gpt_model_flops(b, s, layers, h, v), rel=1e-12
    )
    # Narayanan et al. 2021, Eq. (3): 96*B*s*l*h^2*(1 + s/(6h) + V/(16lh)) with full recompute
    assert training_flops(fwd, "full") == pytest.approx(
        gpt_full_recompute_flops(b, s, layers, h, v), rel=1e-12
    )


@pytest.mark.parametrize(
    "billions, layers, hidden",
    [
        (1.7, 24, 2304),
        (18.4, 40, 6144),
        (145.6, 80, 12288),
        (310.1, 96, 16384),
        (529.6, 105, 20480),
        (1008.0, 128, 25600),
    ],
)
def test_narayanan_parameter_formula_reproduces_table1(billions, layers, hidden):
    # Narayanan et al. 2021, Eq. (2) and Table 1 (V = 51200, s = 2048)
    assert round(gpt_parameters(layers, hidden, 51200, 2048) / 1e9, 1) == billions


def test_qwen3_forward_matmul_flops_are_two_per_weight():
    fwd = forward_flops(qwen3_block(QWEN3_8B), 36, QWEN3_8B.vocab_size, seq=1)
    matmul_weights = 36 * QWEN3_8B.layer_linear_parameters() + 4096 * QWEN3_8B.vocab_size
    assert fwd.attention_linear + fwd.mlp + fwd.logits == 2 * matmul_weights


# ---------------------------------------------------------------- hand-computed plan
