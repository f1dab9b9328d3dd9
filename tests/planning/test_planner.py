"""The memory and step-time planner: sizes, hand-computed plans, refusals, step time (the
published formulas themselves: test_published_formulas.py)."""

import dataclasses

import pytest

from megatron_fork.planning import (
    H100_80GB,
    QWEN3_SIZES,
    SUGGESTED_LAYOUTS,
    LayoutDoesNotFit,
    ModelSize,
    RolloutPlacement,
    TrainingLayout,
    Workload,
    check_layout,
    estimate_step_time,
    padded_vocab_size,
    plan_memory,
)
from megatron_fork.planning.activations import (
    qwen3_block,
)
from megatron_fork.planning.flops import (
    forward_flops,
    training_flops,
)
from megatron_fork.planning.memory import training_breakdown
from tests.planning.layouts import GIB, QWEN3_8B, QWEN3_32B, SEQ
from tests.planning.layouts import layout as _layout

DISAGGREGATED = RolloutPlacement(
    colocated=False, engines=32, engine_tensor_parallel=2, fp8_weights=False
)


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    "name, exact, total_b, non_embedding_b",
    [
        # published (model cards): 8.2B / 6.95B non-embedding, 14.8B / 13.2B, 32.8B / 31.2B
        ("qwen3_8b", 8_190_735_360, 8.2, 6.95),
        ("qwen3_14b", 14_768_307_200, 14.8, 13.2),
        ("qwen3_32b", 32_762_123_264, 32.8, 31.2),
    ],
)
def test_qwen3_parameter_counts_match_published_totals(name, exact, total_b, non_embedding_b):
    size = QWEN3_SIZES[name]
    assert size.parameters() == exact
    assert round(size.parameters() / 1e9, 1) == total_b
    digits = 2 if non_embedding_b == 6.95 else 1
    assert round(size.non_embedding_parameters() / 1e9, digits) == non_embedding_b


def test_qwen3_8b_parameters_by_hand():
    # per layer: q 4096*4096 = 16,777,216; k, v 4096*1024 = 4,194,304 each; o 16,777,216;
    # gate/up/down 3*4096*12288 = 150,994,944; norms 2*4096 + q_norm/k_norm 2*128 = 8,448
    layer = 16_777_216 + 2 * 4_194_304 + 16_777_216 + 150_994_944 + 8_448  # 192,946,432
    # 36 layers + final norm 4096 + embedding and output layer 151936*4096 = 622,329,856 each
    assert QWEN3_8B.parameters() == 36 * layer + 4096 + 2 * 622_329_856 == 8_190_735_360


def _hf_count(**config) -> int:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**config))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("tied", [False, True])
def test_tiny_config_matches_hf_qwen3_parameter_count(tied):
    config = dict(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,  # not hidden / heads, as in Qwen3
        intermediate_size=96,
        vocab_size=1000,
        tie_word_embeddings=tied,
    )
    assert ModelSize.from_hf_config(config).parameters() == _hf_count(**config)


@pytest.mark.parametrize("name", sorted(QWEN3_SIZES))
def test_published_configs_match_hf_qwen3_parameter_count(name):
    size = QWEN3_SIZES[name]
    config = dict(
        hidden_size=size.hidden_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_query_groups,
        head_dim=size.head_dim,
        intermediate_size=size.ffn_hidden_size,
        vocab_size=size.vocab_size,
        tie_word_embeddings=size.tie_embeddings,
    )
    assert ModelSize.from_hf_config(config) == size
    assert size.parameters() == _hf_count(**config)


def test_from_hf_config_names_missing_keys():
    with pytest.raises(ValueError, match="intermediate_size"):
        ModelSize.from_hf_config({"hidden_size": 8, "num_hidden_layers": 1})


def test_padded_vocab_matches_the_model_builder():
    qwen3 = pytest.importorskip("megatron_fork.models.qwen3")
    for tp in (1, 2, 4, 8):
        assert padded_vocab_size(151936, tp) == qwen3.padded_vocab_size(151936, tp, 128)
    assert [padded_vocab_size(151936, tp) for tp in (1, 2, 4, 8)] == [
        151936,  # 1187 * 128
        152064,  # 594 * 256
        152064,  # 297 * 512
        152576,  # 149 * 1024
    ]


def test_kv_cache_bytes_per_token():
    # 2 (k, v) * 36 layers * 8 kv heads * 128 * 2 bytes = 147,456; TP above 8 keeps one head
    assert QWEN3_8B.kv_cache_bytes_per_token() == 147_456
    assert QWEN3_8B.kv_cache_bytes_per_token(2, tensor_parallel=2) == 73_728
    assert QWEN3_8B.kv_cache_bytes_per_token(2, tensor_parallel=16) == 18_432


# ---------------------------------------------------------------- published formulas


def test_qwen3_8b_production_layout_by_hand():
    # Qwen3-8B, TP=2, PP=1, CP=2, DP=16, SP, no recompute, distributed optimizer, 22528 tokens.
    # Local parameters: linear layers 36 * 192,937,984 / 2 = 3,472,883,712; norms (replicated)
    # 36 * 8,448 = 304,128; vocab padded to a multiple of 256 -> 152,064; embedding and output
    # layer shards 152,064 * 4096 / 2 = 311,427,072 each; final norm 4096
    #   -> P = 3,472,883,712 + 304,128 + 2 * 311,427,072 + 4,096 = 4,096,046,080
    # weights 2P = 8,192,092,160; grads 4P = 16,384,184,320; Adam 12P / 32 = 1,536,017,280
    # tokens per GPU 22528 / CP 2 = 11,264; per layer 68,672 * 11,264 = 773,521,408 bytes
    #   -> 36 layers = 27,846,770,688; one layer's working set 773,521,408
    # last stage: final norm + output inputs 4 * 2048 * 11,264 = 92,274,688; logits and their
    # gradient 4 bytes * 76,032 * 11,264 = 3,425,697,792; chunks 8 * 512 * 76,032 = 311,427,072
    parts = training_breakdown(QWEN3_8B, _layout(), 0)
    assert parts == {
        "weights (bf16)": 8_192_092_160,
        "gradients (fp32 main grads)": 16_384_184_320,
        "optimizer (fp32 master, Adam m, v)": 1_536_017_280,
        "activations (36 layers x 1 in flight)": 27_846_770_688,
        "backward working set (one layer)": 773_521_408,
        "final norm + output layer inputs": 92_274_688,
        "logits bf16 [tokens, V/t] + gradient": 3_425_697_792,
        "loss op chunks (2 x fp32 [chunk, V/t])": 311_427_072,
    }
    plan = plan_memory(QWEN3_8B, _layout(), DISAGGREGATED, H100_80GB)
    assert plan.total == 58_561_985_408  # 54.54 GiB
    # capacity: 81559 MiB - 6 GiB reserved = 79,078,359,040 bytes (73.65 GiB)
    assert plan.capacity == 81559 * 2**20 - 6 * 2**30 == 79_078_359_040
    assert plan.fits
    # engine GPU, TP=2 bf16: weights 2 * 8,190,735,360 / 2; pool 0.8 * 81559 MiB
    # = 68,416,647,987; KV 60,225,912,627 bytes / 73,728 per token = 816,866 tokens = 36 x 22528
    assert plan.engine.breakdown == {"engine weights": 8_190_735_360, "KV cache": 60_225_912_627}
    assert (plan.engine.kv_tokens, plan.engine.kv_sequences) == (816_866, 36)


def test_pipeline_first_stage_holds_p_micro_batches():
    layout = _layout(tensor_parallel=8, pipeline_parallel=2, data_parallel=2)
    first = training_breakdown(QWEN3_32B, layout, 0)
    last = training_breakdown(QWEN3_32B, layout, 1)
    assert (
        first["activations (32 layers x 2 in flight)"]
        == 2 * last["activations (32 layers x 1 in flight)"]
    )
    assert "logits bf16 [tokens, V/t] + gradient" in last and "logits" not in " ".join(first)
    assert plan_memory(QWEN3_32B, layout, DISAGGREGATED, H100_80GB).stage == "first"


# ---------------------------------------------------------------- refusals and acceptances


def test_qwen3_32b_tp1_refused_with_breakdown():
    layout = TrainingLayout(1, 1, 1, 64, False, "none", False, False, 1, SEQ)
    plan = plan_memory(QWEN3_32B, layout, DISAGGREGATED, H100_80GB)
    assert not plan.fits
    with pytest.raises(LayoutDoesNotFit) as caught:
        plan.require_fit()
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    for expected in (
        "optimizer (fp32 master, Adam m, v)",  # 12 * 32.76B = 366 GiB
        "366.",
        "activations (64 layers x 1 in flight)",
        "DOES NOT FIT",
        "distributed_optimizer=True",
        "recompute='full'",
        "tensor_parallel=2",
    ):
        assert expected in message, expected


@pytest.mark.parametrize("name", sorted(SUGGESTED_LAYOUTS))
def test_suggested_layouts_fit_with_headroom(name):
    layout, rollout, train_nodes, rollout_nodes = SUGGESTED_LAYOUTS[name]
    model = QWEN3_SIZES[name]
    plan = plan_memory(model, layout, rollout, H100_80GB).require_fit()
    assert plan.capacity - plan.total > 15 * GIB
    assert plan.engine.kv_sequences >= 32
    assert layout.world_size == 8 * train_nodes and rollout.gpus == 8 * rollout_nodes
    assert train_nodes + rollout_nodes <= H100_80GB.nodes
    assert layout.sequence_length == SEQ and layout.micro_batch_size == 1
    budget = layout.max_tokens_per_microbatch  # packed, holding the longest sample
    assert budget >= SEQ and budget % layout.row_multiple == 0
    # the recipes' FP8 plan (its weight copies) keeps >= 10 GiB free at the budget
    fp8 = plan_memory(model, dataclasses.replace(layout, fp8=True), rollout, H100_80GB)
    assert fp8.capacity - fp8.total > 10 * GIB
    assert layout.sequence_parallel and layout.distributed_optimizer
    assert (512 // layout.data_parallel) * layout.data_parallel == 512  # a mini-batch splits
    assert "ESTIMATE" in plan.table()


def test_colocated_release_takes_the_larger_phase():
    colocated = RolloutPlacement(True, 64, 1, False)
    concurrent = plan_memory(QWEN3_8B, _layout(), colocated, H100_80GB)
    assert concurrent.total == concurrent.training_total + concurrent.engine.pool
    assert not concurrent.fits
    with pytest.raises(LayoutDoesNotFit, match="release_between_phases=True"):
        concurrent.require_fit()
    released = dataclasses.replace(colocated, release_between_phases=True)
    plan = plan_memory(QWEN3_8B, _layout(), released, H100_80GB)
    # each phase counts what the other side keeps (test_colocated.py: by hand)
    assert plan.total == max(plan.phase_totals.values()) and plan.fits


def test_engine_without_room_for_one_sequence_does_not_fit():
    rollout = RolloutPlacement(False, 64, 1, False, mem_fraction_static=0.3)
    plan = plan_memory(QWEN3_32B, _layout(tensor_parallel=8, data_parallel=4), rollout, H100_80GB)
    assert plan.engine.kv_sequences == 0 and not plan.fits
    with pytest.raises(LayoutDoesNotFit, match="engine_tensor_parallel"):
        plan.require_fit()


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "model, overrides, message",
    [
        (
            QWEN3_8B,
            dict(tensor_parallel=16, data_parallel=4),
            r"tensor_parallel=16 does not divide num_query_groups \(kv heads\)=8.*\[1, 2, 4, 8\]",
        ),
        (
            QWEN3_SIZES["qwen3_14b"],
            dict(tensor_parallel=3),
            r"tensor_parallel=3 does not divide num_attention_heads=40",
        ),
        (
            dataclasses.replace(QWEN3_8B, ffn_hidden_size=12290),
            dict(tensor_parallel=4),
            r"ffn_hidden_size=12290.*one of \[1, 2\]",
        ),
        (QWEN3_8B, dict(pipeline_parallel=5), r"pipeline_parallel=5 does not divide num_layers=36"),
        (QWEN3_8B, dict(context_parallel=3), r"not divisible by 2 \* context_parallel = 6"),
        (
            QWEN3_8B,
            dict(sequence_length=22530, context_parallel=1, tensor_parallel=4),
            r"sequence_parallel.*22530 tokens",
        ),
    ],
)
def test_check_layout_refuses_with_what_to_change(model, overrides, message):
    with pytest.raises(ValueError, match=message):
        check_layout(model, _layout(**overrides))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: _layout(recompute="partial"), "TrainingLayout.recompute"),
        (lambda: _layout(tensor_parallel=1), "sequence_parallel needs tensor_parallel > 1"),
        (lambda: _layout(recompute_modules=("attention",)), "recompute_modules"),
        (lambda: _layout(data_parallel=0), "TrainingLayout.data_parallel"),
        (
            lambda: RolloutPlacement(False, 1, 1, False, mem_fraction_static=1.2),
            "mem_fraction_static",
        ),
        (
            lambda: RolloutPlacement(False, 1, 1, False, release_between_phases=True),
            "colocated=True",
        ),
        (lambda: dataclasses.replace(H100_80GB, reserved_gib=90.0), "Cluster.reserved_gib"),
    ],
)
def test_dataclasses_validate_with_field_names(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_colocated_engines_must_cover_the_training_gpus():
    with pytest.raises(ValueError, match="set engines=64"):
        plan_memory(QWEN3_8B, _layout(), RolloutPlacement(True, 8, 1, False), H100_80GB)


# ---------------------------------------------------------------- step time


WORKLOAD = Workload(512, 16, 256, 8192, 16, generation_rounds=1.5, max_response_tokens=20480)


def test_step_time_estimate_is_labelled_and_scales_with_flops():
    layout, rollout, _, _ = SUGGESTED_LAYOUTS["qwen3_8b"]
    layout = dataclasses.replace(layout, max_tokens_per_microbatch=None)  # padded rows
    base = estimate_step_time(QWEN3_8B, layout, rollout, H100_80GB, WORKLOAD)
    assert "ESTIMATE" in base.table() and base.total == pytest.approx(sum(base.phases.values()))
    assert all(seconds > 0 for seconds in base.phases.values())
    full = estimate_step_time(
        QWEN3_8B, dataclasses.replace(layout, recompute="full"), rollout, H100_80GB, WORKLOAD
    )
    # every row padded to the longest sample: 256 + 20480 - 1 positions, rounded up to 8
    fwd = forward_flops(qwen3_block(QWEN3_8B), 36, QWEN3_8B.vocab_size, 20736)
    ratio = training_flops(fwd, "full") / training_flops(fwd, "none")
    key = "training (fwd + bwd + optimizer)"
    assert full.phases[key] / base.phases[key] == pytest.approx(ratio)
    assert full.phases["rollout decode"] == base.phases["rollout decode"]


def test_decode_batch_is_bounded_by_the_kv_cache():
    layout, rollout, _, _ = SUGGESTED_LAYOUTS["qwen3_8b"]
    estimate = estimate_step_time(QWEN3_8B, layout, rollout, H100_80GB, WORKLOAD)
    # 816,866 KV tokens // (256 + 8192) = 96 sequences at once; 512*16*1.5 / 32 engines = 384
    assert estimate.details["decode batch per engine"] == 96
    assert estimate.details["decode waves"] == 4
