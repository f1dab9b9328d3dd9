"""Text tables for the plans, and what to change when a layout does not fit."""

GIB = 2**30
_WIDTH = 46


def gib(n: float) -> str:
    return f"{n / GIB:8.2f} GiB"


def _rows(breakdown: dict[str, int]) -> list[str]:
    return [f"  {name:<{_WIDTH}}{gib(value)}" for name, value in breakdown.items()]


def memory_table(plan) -> str:
    """The plan of a training GPU (and of an engine GPU), in GiB. ``plan``: a MemoryPlan."""
    lines = [f"ESTIMATE: per-GPU memory, training GPU (pipeline stage: {plan.stage})"]
    lines += _rows(plan.breakdown)
    lines.append(f"  {'training phase total':<{_WIDTH}}{gib(plan.training_total)}")
    engine = plan.engine
    if plan.colocated:
        how = "alongside training" if plan.concurrent else "released during training"
        lines.append(f"  {'rollout engine pool (' + how + ')':<{_WIDTH}}{gib(engine.pool)}")
    verdict = "fits" if plan.total <= plan.capacity else "DOES NOT FIT"
    lines.append(
        f"  {'peak':<{_WIDTH}}{gib(plan.total)}  of {plan.capacity / GIB:.2f} usable: "
        f"{verdict}, headroom {(plan.capacity - plan.total) / GIB:.2f} GiB"
    )
    where = "on the training GPUs" if plan.colocated else "per engine GPU"
    lines.append(f"Rollout engine {where}:")
    lines += _rows(engine.breakdown)
    lines.append(
        f"  KV cache holds {engine.kv_tokens:,} tokens = {engine.kv_sequences} full-length "
        f"sequence(s){'' if engine.fits else ': NOT ONE - DOES NOT FIT'}"
    )
    lines += [f"  note: {note}" for note in plan.notes]
    return "\n".join(lines)


def suggestions(plan) -> list[str]:
    """What would shrink the plan, biggest lever first. ``plan``: a MemoryPlan."""
    layout, advice = plan.layout, []
    if plan.total > plan.capacity:
        if layout.packing and layout.max_tokens_per_microbatch > layout.sequence_length:
            advice.append(
                f"max_tokens_per_microbatch below {layout.max_tokens_per_microbatch} (at least "
                f"the longest sample, {layout.sequence_length}): activations and logits scale "
                "with it"
            )
        if not layout.distributed_optimizer:
            advice.append("distributed_optimizer=True: shards 12 of the 18 bytes/param (DP x CP)")
        if layout.recompute != "full":
            advice.append(
                f"recompute='full' (keeps only each layer's input; now '{layout.recompute}'), "
                "or recompute='selective' with recompute_modules=('mlp', 'layernorm')"
            )
        if layout.tensor_parallel < 8:
            advice.append(
                f"tensor_parallel={2 * layout.tensor_parallel} (now {layout.tensor_parallel}; "
                "keep it within a node) with sequence_parallel=True"
            )
        advice.append(
            f"pipeline_parallel above {layout.pipeline_parallel} (fewer layers per GPU) or "
            f"context_parallel above {layout.context_parallel} (fewer tokens per GPU)"
        )
        if plan.colocated and plan.concurrent:
            advice.append("release_between_phases=True, or a lower mem_fraction_static")
    if plan.engine is not None and not plan.engine.fits:
        advice.append(
            "engine: raise engine_tensor_parallel, set fp8_weights=True or raise "
            "mem_fraction_static so the KV cache holds a full-length sequence"
        )
    return advice
