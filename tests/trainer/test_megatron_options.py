"""The run config's parallel and precision choices reach Megatron-Core as written: the
TransformerConfig / DDP / optimizer fields (read back from built objects), recomputation really
reruns the layers in the backward, and GPU-only features are refused on CPU by name."""

import pytest
import torch

from megatron_fork.trainer.megatron_options import (
    ddp_config,
    needs_gpu,
    optimizer_precision,
    transformer_options,
)
from megatron_fork.trainer.trainer_config import ParallelConfig, PrecisionConfig
from tests.support.distributed import run_distributed
from tests.support.megatron_setup import init_megatron
from tests.support.tiny_qwen3 import tiny_qwen3_config


def test_production_settings_map_onto_megatron_fields():
    parallel = ParallelConfig(
        tensor_parallel=8, sequence_parallel=True, recompute="full", distributed_optimizer=True
    )
    precision = PrecisionConfig(params="bf16", fp8="hybrid", fp8_recipe="blockwise")
    assert transformer_options(parallel, precision) == {
        "sequence_parallel": True,
        "variable_seq_lengths": False,
        "recompute_granularity": "full",
        "recompute_method": "uniform",
        "recompute_num_layers": 1,
        "bf16": True,
        "fp8": "hybrid",
        "fp8_recipe": "blockwise",
        "first_last_layers_bf16": True,
        "num_layers_at_start_in_bf16": 1,
        "num_layers_at_end_in_bf16": 1,
    }
    ddp = ddp_config(parallel, precision)
    assert ddp.use_distributed_optimizer and ddp.grad_reduce_in_fp32
    assert optimizer_precision(parallel, precision) == {
        "bf16": True,
        "params_dtype": torch.bfloat16,
        "use_distributed_optimizer": True,
    }
    assert len(needs_gpu(parallel, precision)) == 2  # SP, FP8 (the distributed optimizer runs)
    selective = transformer_options(ParallelConfig(recompute="selective"), PrecisionConfig())
    assert selective["recompute_modules"] == ["core_attn"]
    # packed micro-batches differ in length: a pipeline sends their shapes
    piped = transformer_options(ParallelConfig(pipeline_parallel=2), PrecisionConfig())
    assert piped["variable_seq_lengths"] and piped["moe_token_dispatcher_type"] == "alltoall"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(recompute="some"), "parallel.recompute"),
        (dict(sequence_parallel=True), "needs parallel.tensor_parallel > 1"),
        (dict(context_parallel=0), "parallel.context_parallel must be >= 1"),
    ],
)
def test_bad_parallel_settings_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        ParallelConfig(**changes)


def test_fp8_needs_bf16_params():
    with pytest.raises(ValueError, match="precision.fp8 needs precision.params=bf16"):
        PrecisionConfig(fp8="e4m3")


def _layer_forwards(recompute: str) -> tuple[int, str, bool]:
    """Forward calls of layer 0's MLP in one forward + backward, and the model's config."""
    from megatron_fork.trainer.actor import megatron_model

    model = megatron_model(tiny_qwen3_config(), ParallelConfig(recompute=recompute))
    calls = []
    model.decoder.layers[0].mlp.register_forward_hook(lambda *_: calls.append(1))
    tokens = torch.randint(0, 60, (2, 16))
    positions = torch.arange(16).expand(2, 16)
    model(tokens, positions, None).float().sum().backward()
    return len(calls), model.config.recompute_granularity, model.config.bf16


def _recompute_worker(rank, world):
    init_megatron(seed=0)
    assert _layer_forwards("none") == (1, None, False)
    assert _layer_forwards("full") == (2, "full", False)  # the backward reran the layer


def test_full_recompute_reruns_each_layer_in_the_backward():
    run_distributed(_recompute_worker, 1)


def _refusal_worker(rank, world):
    from megatron_fork.trainer.actor import megatron_model

    init_megatron()
    fp8 = PrecisionConfig(params="bf16", fp8="e4m3")
    with pytest.raises(ValueError, match="precision.fp8=e4m3.*needs CUDA and Transformer"):
        megatron_model(tiny_qwen3_config(), ParallelConfig(), fp8)
    megatron_model(tiny_qwen3_config(), ParallelConfig(distributed_optimizer=True))  # CPU too


def test_gpu_only_features_are_refused_on_cpu_by_name():
    run_distributed(_refusal_worker, 1)


def _transformer_config(parallel: ParallelConfig, precision: PrecisionConfig):
    """Megatron's own TransformerConfig validation on the settings (no GPU needed to build it)."""
    from megatron.core.transformer import TransformerConfig

    return TransformerConfig(
        num_layers=8,
        hidden_size=256,
        num_attention_heads=8,
        num_query_groups=8,
        tensor_model_parallel_size=parallel.tensor_parallel,
        pipeline_model_parallel_size=parallel.pipeline_parallel,
        context_parallel_size=parallel.context_parallel,
        params_dtype=torch.bfloat16 if precision.params == "bf16" else torch.float32,
        **transformer_options(parallel, precision),
    )


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
@pytest.mark.parametrize("fp8_recipe", ["blockwise", "tensorwise", "mxfp8", None])
def test_megatron_accepts_every_allowed_combination(recompute, fp8_recipe):
    parallel = ParallelConfig(
        tensor_parallel=2, context_parallel=2, sequence_parallel=True, recompute=recompute
    )
    fp8 = {"fp8": "e4m3", "fp8_recipe": fp8_recipe} if fp8_recipe else {}
    config = _transformer_config(parallel, PrecisionConfig(params="bf16", **fp8))
    assert config.recompute_granularity == (None if recompute == "none" else recompute)
    assert config.fp8 == ("e4m3" if fp8_recipe else None)


def test_delayed_scaling_needs_no_bf16_edge_layers():
    with pytest.raises(ValueError, match="fp8_recipe=delayed cannot keep edge layers"):
        PrecisionConfig(params="bf16", fp8="hybrid", fp8_recipe="delayed")
    precision = PrecisionConfig(
        params="bf16", fp8="hybrid", fp8_recipe="delayed", bf16_edge_layers=0
    )
    assert _transformer_config(ParallelConfig(), precision).fp8_recipe == "delayed"


def test_selective_recompute_takes_the_listed_modules():
    parallel = ParallelConfig(recompute="selective", recompute_modules=("mlp", "core_attn"))
    assert _transformer_config(parallel, PrecisionConfig()).recompute_modules == [
        "mlp",
        "core_attn",
    ]
    with pytest.raises(ValueError, match="recompute_modules"):
        ParallelConfig(recompute="selective", recompute_modules=("attention",))


@pytest.mark.parametrize(
    ("tp", "cp", "sp", "fp8_recipe"),
    [
        (1, 1, False, None),
        (2, 2, True, None),
        (8, 2, True, None),
        (2, 2, True, "blockwise"),
        (8, 2, True, "tensorwise"),
        (4, 1, False, "blockwise"),
        (2, 2, True, "mxfp8"),
    ],
)
def test_rows_meet_megatron_and_te_divisibility_rules_at_every_length(tp, cp, sp, fp8_recipe):
    """Megatron: a CP split needs s % (2 CP) == 0, sequence parallelism (s / CP) % TP == 0; TE:
    an FP8 GEMM's local rows (s / CP, / TP with SP) divide by 16 (128 for blockwise tiles)."""
    from megatron_fork.rl.train_batch import row_length, row_multiple

    parallel = ParallelConfig(tensor_parallel=tp, context_parallel=cp, sequence_parallel=sp)
    fp8 = {"fp8": "e4m3", "fp8_recipe": fp8_recipe} if fp8_recipe else {}
    config = _transformer_config(parallel, PrecisionConfig(params="bf16", **fp8))
    multiple = row_multiple(config)
    for longest in range(1000, 1300):
        rows = row_length(longest, multiple)
        assert longest - 1 <= rows < longest - 1 + multiple and rows % 8 == 0
        assert cp == 1 or rows % (2 * cp) == 0
        local = rows // cp // (tp if sp else 1)
        assert not sp or (rows // cp) % tp == 0
        fp8_rows = {"blockwise": 128, "mxfp8": 32}.get(fp8_recipe, 16)  # TE / Megatron alignment
        assert not fp8_recipe or local % fp8_rows == 0
