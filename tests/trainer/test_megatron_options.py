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
from megatron_fork.trainer.rl_config import ParallelConfig, PrecisionConfig
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
    assert len(needs_gpu(parallel, precision)) == 3  # SP, distributed optimizer, FP8
    selective = transformer_options(ParallelConfig(recompute="selective"), PrecisionConfig())
    assert selective["recompute_modules"] == ["core_attn"]


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
    parallel = ParallelConfig(distributed_optimizer=True)
    with pytest.raises(ValueError, match="distributed_optimizer.*needs CUDA and Transformer"):
        megatron_model(tiny_qwen3_config(), parallel)


def test_gpu_only_features_are_refused_on_cpu_by_name():
    run_distributed(_refusal_worker, 1)
