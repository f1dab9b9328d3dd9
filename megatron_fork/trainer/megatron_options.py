"""The run config's parallel and precision choices as Megatron-Core settings: TransformerConfig
fields, the DDP config and the optimizer's precision. One place, so a recipe's layout reaches
Megatron exactly as written (tests read the built objects back)."""

import torch
from megatron.core.distributed import DistributedDataParallelConfig

from megatron_fork.trainer.trainer_config import ParallelConfig, PrecisionConfig


def _recompute(parallel: ParallelConfig) -> dict:
    if parallel.recompute == "selective":  # the listed modules of every layer
        return {
            "recompute_granularity": "selective",
            "recompute_modules": list(parallel.recompute_modules),
        }
    if parallel.recompute == "full":  # every layer keeps its input; the backward reruns it
        return {
            "recompute_granularity": "full",
            "recompute_method": "uniform",
            "recompute_num_layers": 1,
        }
    return {}


def needs_gpu(parallel: ParallelConfig, precision: PrecisionConfig) -> list[str]:
    """The chosen features that only Transformer Engine on a GPU provides."""
    reasons = []
    if parallel.context_parallel > 1:
        reasons.append("parallel.context_parallel > 1 (TE's context-parallel attention)")
    if parallel.sequence_parallel:  # the local spec's torch norms refuse it
        reasons.append("parallel.sequence_parallel (TE's or Apex's norms)")
    if precision.fp8 != "none":
        reasons.append(f"precision.fp8={precision.fp8} (TE's FP8 GEMMs)")
    return reasons


def params_dtype(precision: PrecisionConfig) -> torch.dtype:
    return torch.bfloat16 if precision.params == "bf16" else torch.float32


def variable_seq_lengths_options(pipeline_parallel: int) -> dict:
    """Packed micro-batches differ in length: through a pipeline, p2p then sends each
    activation's shape first (one small message per transfer; Megatron's own switch for this
    case). Megatron refuses it with its default MoE dispatcher ("allgather") even in a dense
    model (transformer_config.py:1827), so the dispatcher is named too (unused: Qwen3 dense)."""
    if pipeline_parallel == 1:
        return {"variable_seq_lengths": False}
    return {"variable_seq_lengths": True, "moe_token_dispatcher_type": "alltoall"}


def transformer_options(parallel: ParallelConfig, precision: PrecisionConfig) -> dict:
    """Extra ``TransformerConfig`` fields (``build_gpt_model(transformer_options=...)``)."""
    options = {"sequence_parallel": parallel.sequence_parallel, **_recompute(parallel)}
    options.update(variable_seq_lengths_options(parallel.pipeline_parallel))
    if precision.params == "bf16":
        options["bf16"] = True
    if precision.fp8 != "none":
        options.update(fp8=precision.fp8, fp8_recipe=precision.fp8_recipe)
        if precision.bf16_edge_layers:
            options.update(
                first_last_layers_bf16=True,
                num_layers_at_start_in_bf16=precision.bf16_edge_layers,
                num_layers_at_end_in_bf16=precision.bf16_edge_layers,
            )
    return options


def ddp_config(parallel: ParallelConfig, precision: PrecisionConfig):
    """Gradients are reduced in fp32 when the weights are bf16 (as Megatron's GPT recipes)."""
    return DistributedDataParallelConfig(
        use_distributed_optimizer=parallel.distributed_optimizer,
        grad_reduce_in_fp32=precision.params == "bf16",
    )


def optimizer_precision(parallel: ParallelConfig, precision: PrecisionConfig) -> dict:
    """``OptimizerConfig`` fields: fp32 main weights for bf16 models, ZeRO-1 sharding."""
    return {
        "bf16": precision.params == "bf16",
        "params_dtype": params_dtype(precision),
        "use_distributed_optimizer": parallel.distributed_optimizer,
    }
