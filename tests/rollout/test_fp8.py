"""Blockwise FP8: a hand-worked block, the error bound on random weights with outliers, and
which tensors are quantised."""

import torch

from megatron_fork.rollout.fp8 import (
    FP8_MAX,
    dequantize_blockwise,
    fp8_named_tensors,
    quantize_blockwise,
)


def test_hand_worked_block():
    # One 2x2 block: amax 896 -> scale_inv 2; 896/2 = 448 (e4m3's max), 3/2 = 1.5,
    # -0.25/2 = -0.125 and 96/2 = 48 = 1.5 * 2^5 are exact in e4m3 (3 mantissa bits).
    weight = torch.tensor([[896.0, 3.0], [-0.25, 96.0]])
    quantized, scale_inv = quantize_blockwise(weight, block=2)
    assert scale_inv.tolist() == [[2.0]]
    assert quantized.float().tolist() == [[448.0, 1.5], [-0.125, 48.0]]
    assert torch.equal(dequantize_blockwise(quantized, scale_inv, block=2), weight)
    # 101/2 = 50.5 is not: e4m3 steps by 4 between 32 and 64, so it rounds to 52 (-> 104).
    quantized, scale_inv = quantize_blockwise(torch.tensor([[896.0, 101.0]]), block=2)
    assert dequantize_blockwise(quantized, scale_inv, block=2)[0, 1].item() == 104.0


def test_error_bound_on_random_weights():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(300, 200, generator=generator) * 0.02
    weight[5, 7], weight[250, 190] = 3.0, -1.5  # outliers set their blocks' scales
    quantized, scale_inv = quantize_blockwise(weight)
    assert quantized.dtype == torch.float8_e4m3fn and scale_inv.shape == (3, 2)
    restored = dequantize_blockwise(quantized, scale_inv)
    scale = scale_inv.repeat_interleave(128, 0).repeat_interleave(128, 1)[:300, :200]
    bound = torch.maximum(weight.abs() * 2.0**-4, scale * 2.0**-10)
    assert ((restored - weight).abs() <= bound).all()
    assert (restored - weight).abs().max() > 0  # the bound is not vacuous: it does round
    assert quantized.float().abs().max() == FP8_MAX  # each block's largest value maps to 448


def test_only_linear_weights_are_quantised():
    named = [
        ("model.embed_tokens.weight", torch.ones(4, 2)),
        ("model.layers.0.self_attn.q_proj.weight", torch.ones(4, 2)),
        ("model.layers.0.self_attn.q_norm.weight", torch.ones(2)),
        ("model.layers.0.mlp.down_proj.weight", torch.ones(2, 4)),
        ("lm_head.weight", torch.ones(4, 2)),
    ]
    out = dict(fp8_named_tensors(named))
    assert sorted(out) == sorted(
        [name for name, _ in named]
        + ["model.layers.0.self_attn.q_proj.weight_scale_inv",
           "model.layers.0.mlp.down_proj.weight_scale_inv"]
    )  # fmt: skip
    assert out["model.layers.0.mlp.down_proj.weight"].dtype == torch.float8_e4m3fn
    assert out["lm_head.weight"].dtype == torch.float32


def test_an_fp8_server_computes_with_the_weights_an_fp8_engine_holds(tmp_path):
    """Weights go out as blockwise FP8 over the real weight-update group; the CPU server in FP8
    mode dequantises them on receipt: its samples equal a reference engine holding the
    quantise-dequantise round trip of the weights, and differ from the unquantised model's."""
    from megatron_fork.rollout.server_engine import ServerRolloutEngine
    from megatron_fork.rollout.server_pool import ServerPool, cpu_server_command
    from megatron_fork.rollout.torch_engine import TorchRolloutEngine
    from megatron_fork.rollout.types import GenerationRequest, SamplingParams
    from tests.support.tiny_qwen3 import tiny_qwen3_model

    tiny_qwen3_model(seed=0).save_pretrained(tmp_path / "hf")
    trained = tiny_qwen3_model(seed=4)
    command = cpu_server_command(str(tmp_path / "hf"), load_format="dummy", quantization="fp8")
    requests = [
        GenerationRequest((1, 2, 3), SamplingParams(max_new_tokens=6, seed=i), f"r{i}")
        for i in range(4)
    ]
    with ServerPool([command]) as pool:
        engine = ServerRolloutEngine(pool.urls, pool, fp8_block=128)
        engine.update_weights(list(trained.state_dict().items()))
        engine.update_weights([], version=1)
        got = engine.generate(requests)
    held = dict(fp8_named_tensors(trained.state_dict().items()))
    reference = tiny_qwen3_model(seed=4)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if held[name].dtype == torch.float8_e4m3fn:
                param.copy_(dequantize_blockwise(held[name], held[name + "_scale_inv"]))
    expected = TorchRolloutEngine(reference).generate(requests)
    unquantised = TorchRolloutEngine(trained).generate(requests)
    assert [s.output_ids for s in got] == [s.output_ids for s in expected]
    gap = max(
        abs(a - b)
        for g, e in zip(got, expected, strict=True)
        for a, b in zip(g.output_logprobs, e.output_logprobs, strict=True)
    )
    assert gap <= 1e-6
    assert [s.output_logprobs for s in got] != [s.output_logprobs for s in unquantised]
