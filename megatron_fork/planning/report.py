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
    if plan.colocated and plan.concurrent:
        lines.append(f"  {'rollout engine pool (alongside training)':<{_WIDTH}}{gib(engine.pool)}")
    lines += _phase_rows(plan)
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


def _phase_rows(plan) -> list[str]:
    """Colocated with release: each phase of the step on one GPU, the peak one marked."""
    if not plan.phases:
        return []
    lines = [f"Colocated step, phase by phase (trainer_offload={plan.trainer_offload!r}):"]
    for name, parts in plan.phases.items():
        lines.append(f"  {name} phase:")
        shown = {k: v for k, v in parts.items() if k not in plan.breakdown}
        if len(shown) < len(parts):
            lines.append(f"    {'the training rows above':<{_WIDTH - 2}}{gib(plan.training_total)}")
        lines += [f"    {part:<{_WIDTH - 2}}{gib(value)}" for part, value in shown.items()]
        total = sum(parts.values())
        over = "  DOES NOT FIT" if total > plan.capacity else ""
        lines.append(f"    {name + ' phase total':<{_WIDTH - 2}}{gib(total)}{over}")
    return lines


def _colocated_advice(plan) -> list[str]:
    """What shrinks the colocated phases that do not fit (training's own levers follow)."""
    totals, advice = plan.phase_totals, []
    if totals.get("rollout", 0) > plan.capacity:
        if plan.trainer_offload != "all":
            advice.append("trainer_offload='all' (the trainer's weights to host during rollout)")
        advice.append(
            f"a lower mem_fraction_static (the engine pool is {plan.engine.pool / GIB:.1f} GiB)"
        )
    if totals.get("weight sync", 0) > plan.capacity:
        advice.append("engine_tensor_parallel above its value (fewer engine weights per GPU)")
    return advice


def suggestions(plan) -> list[str]:
    """What would shrink the plan, biggest lever first. ``plan``: a MemoryPlan."""
    layout, advice = plan.layout, []
    if plan.phases:
        advice += _colocated_advice(plan)
    training_peak = plan.phase_totals["training"] if plan.phases else plan.total
    if training_peak > plan.capacity:
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
