"""Everything about a recipe that can be wrong is found here, before a job is submitted: the
process count against TP x PP x CP, Megatron's divisibility rules against the model's shape
(heads, kv heads, layers; the sequence, or with packing the micro-batch's token budget, against
2 x CP and TP with sequence parallel), the packing budget against the longest prompt + response,
the engines' rules (sglang's or vLLM's, by ``rollout.backend``), and the memory plan of the most
loaded GPU (made at the budget with packing, at the padded rows without)."""

import math
from pathlib import PurePosixPath

from megatron_fork.planning import (
    H100_80GB,
    QWEN3_SIZES,
    Cluster,
    MemoryPlan,
    RolloutPlacement,
    TrainingLayout,
    check_layout,
    plan_memory,
)
from megatron_fork.rl.train_batch import check_batch_layout, layout_row_multiple
from recipes.colocation import check_colocated, colocated_engine_count, is_colocated
from recipes.recipe import Recipe


def context_multiple(recipe: Recipe) -> int:
    """What the trainer pads every row to at this layout: the planned context must be a
    multiple, so the plan is exact."""
    parallel, precision = recipe.config.parallel, recipe.config.precision
    return layout_row_multiple(
        parallel.context_parallel,
        parallel.tensor_parallel,
        parallel.sequence_parallel,
        None if precision.fp8 == "none" else precision.fp8_recipe,
    )


def training_layout(recipe: Recipe) -> TrainingLayout:
    """The planner's view of the recipe's training side."""
    parallel = recipe.config.parallel
    return TrainingLayout(
        tensor_parallel=parallel.tensor_parallel,
        pipeline_parallel=parallel.pipeline_parallel,
        context_parallel=parallel.context_parallel,
        data_parallel=max(recipe.data_parallel, 1),
        sequence_parallel=parallel.sequence_parallel,
        recompute=parallel.recompute,
        recompute_modules=parallel.recompute_modules,
        distributed_optimizer=parallel.distributed_optimizer,
        fp8=recipe.config.precision.fp8 != "none",
        micro_batch_size=recipe.config.micro_batch_size,
        sequence_length=recipe.launch.context_tokens,
        max_tokens_per_microbatch=(
            recipe.config.max_tokens_per_microbatch if recipe.config.packing else None
        ),
    )


VLLM_SEED_LIMIT = 2**32
"""vLLM's ``--seed`` is in [0, 2**32) (0.34.0 ``config/model.py:220``)."""


def engine_memory_share(recipe: Recipe) -> float:
    """Each engine GPU's share for weights + KV cache: sglang's ``mem_fraction_static`` or
    vLLM's ``gpu_memory_utilization`` (the planner's engine pool either way)."""
    engines = recipe.launch.engines
    if recipe.config.rollout.backend == "vllm":
        return engines.gpu_memory_utilization
    return engines.mem_fraction_static


def rollout_placement(recipe: Recipe) -> RolloutPlacement:
    """The planner's view of the engines; its rules (engine TP divides the attention heads,
    replicates the kv heads evenly) are sglang's and vLLM's alike (vLLM 0.34.0
    ``model_executor/models/qwen3.py:88-98``)."""
    engines, colocated = recipe.launch.engines, is_colocated(recipe)
    count = colocated_engine_count(recipe) if colocated else recipe.launch.engine_count
    return RolloutPlacement(
        colocated=colocated,
        engines=max(count, 1),
        engine_tensor_parallel=engines.tensor_parallel,
        fp8_weights=recipe.config.rollout.fp8,
        mem_fraction_static=engine_memory_share(recipe),
        release_between_phases=colocated,  # handed back and forth every step
        engine_backend=recipe.config.rollout.backend,
    )


def check_processes(recipe: Recipe) -> None:
    """Ranks for the layout, engines per node, and every mini-batch splitting into whole
    micro-batches on each data-parallel rank (without packing)."""
    parallel, launch = recipe.config.parallel, recipe.launch
    if launch.world_size % parallel.model_parallel_size:
        raise ValueError(
            f"{launch.train_nodes} nodes x {launch.gpus_per_node} GPUs = {launch.world_size} "
            f"ranks cannot hold TP x PP x CP = {parallel.model_parallel_size}: change "
            "launch.train_nodes or the parallel sizes"
        )
    engines = launch.engines
    if engines.nodes and launch.gpus_per_node % engines.tensor_parallel:
        raise ValueError(
            f"launch.engines.tensor_parallel={engines.tensor_parallel} must divide the "
            f"{launch.gpus_per_node} GPUs of a node"
        )
    if engines.nodes and recipe.config.rollout.engine != "server":
        raise ValueError("engine nodes need rollout.engine=server (sglang or vLLM engines)")
    config = recipe.config
    samples = config.rollout.prompts_per_step * config.rollout.samples_per_prompt
    if not config.packing:  # packed, the planner balances any count over the ranks
        check_batch_layout(
            samples, config.mini_batches_per_step, config.micro_batch_size, recipe.data_parallel
        )


def check_context(recipe: Recipe) -> None:
    """The planned length must hold a prompt and a full response, and the row the trainer
    builds (a padded row of ``launch.context_tokens``, or with packing a micro-batch of
    ``max_tokens_per_microbatch``) must be a length it makes rows of: Megatron's 2 x CP split,
    TP x CP with sequence parallelism, FP8 GEMM rows (the trainer floors a budget to it)."""
    launch, rollout, config = recipe.launch, recipe.config.rollout, recipe.config
    multiple = context_multiple(recipe)
    name, length = "launch.context_tokens", launch.context_tokens
    if config.packing:
        name, length = "max_tokens_per_microbatch", config.max_tokens_per_microbatch
    if length % multiple:
        fitting = math.ceil(length / multiple) * multiple
        raise ValueError(
            f"{name}={length} is not a multiple of {multiple}, "
            "the row length unit at this layout (2 x CP; TP x CP with sequence parallelism; "
            f"FP8 GEMM rows per rank): use {fitting}"
        )
    if launch.context_tokens <= rollout.max_new_tokens:
        raise ValueError(
            f"launch.context_tokens={launch.context_tokens} must hold a prompt plus "
            f"rollout.max_new_tokens={rollout.max_new_tokens}: raise it to the prompt cap + "
            "max_new_tokens (the memory plan is made at this length)"
        )


def check_budget(recipe: Recipe) -> None:
    """With packing, ``max_tokens_per_microbatch`` must hold the longest prompt + response
    (``launch.context_tokens``): a longer sample would train alone in a micro-batch of its own
    length, which the memory plan (made at the budget) never saw."""
    budget, longest = recipe.config.max_tokens_per_microbatch, recipe.launch.context_tokens
    if recipe.config.packing and budget < longest:
        multiple = context_multiple(recipe)
        raise ValueError(
            f"max_tokens_per_microbatch={budget} is below the longest prompt + response "
            f"(launch.context_tokens={longest}): such a sample would train alone in a "
            f"micro-batch the memory plan does not cover; raise max_tokens_per_microbatch to at "
            f"least {math.ceil(longest / multiple) * multiple}"
        )


def check_engines_exist(recipe: Recipe) -> None:
    """A GPU recipe's rollouts need engines: its own node group or ``server_urls`` (without
    either the trainer would start the project's CPU servers for a GPU model)."""
    rollout = recipe.config.rollout
    if is_colocated(recipe):
        return  # the job starts them on its own GPUs (check_colocated)
    if rollout.engine == "server" and not recipe.launch.engines.nodes and not rollout.server_urls:
        raise ValueError(
            f"{recipe.name}: rollout.engine=server needs launch.engines.nodes > 0 or "
            f"rollout.server_urls (running {rollout.backend} engines)"
        )


def check_vllm_engines(recipe: Recipe) -> None:
    """vLLM engines of the job's node group take their weights over NCCL only (vLLM's
    weight-transfer engine is CUDA's; no gloo) and a seed in [0, 2**32), which vLLM would
    otherwise refuse only once the job runs."""
    config, engines = recipe.config, recipe.launch.engines
    if config.rollout.backend != "vllm" or not engines.nodes:
        return
    if config.rollout.weight_backend != "nccl":
        raise ValueError(
            f"rollout.backend=vllm engines receive weights over NCCL only: set "
            f"rollout.weight_backend=nccl (got {config.rollout.weight_backend!r})"
        )
    if not 0 <= config.seed < VLLM_SEED_LIMIT:
        raise ValueError(f"seed={config.seed}: vLLM engines take a seed in [0, 2**32)")


def check_fp8_edge_layers(recipe: Recipe, num_layers: int) -> None:
    precision = recipe.config.precision
    if precision.fp8 != "none" and 2 * precision.bf16_edge_layers >= num_layers:
        raise ValueError(
            f"precision.bf16_edge_layers={precision.bf16_edge_layers} at each end leaves no "
            f"FP8 layer of {num_layers}: lower it"
        )


def check_recipe(recipe: Recipe, cluster: Cluster = H100_80GB) -> MemoryPlan | None:
    """Raise ValueError naming what to change (``LayoutDoesNotFit`` with the breakdown when
    the most loaded GPU would run out of memory); return the memory plan. None for a model the
    planner has no shape for: the CPU default, which the trainer checks as it builds."""
    check_budget(recipe)  # in the recipe's own keys, before the planner refuses it in its own
    if recipe.launch.model is None:
        check_processes(recipe)
        check_vllm_engines(recipe)
        check_context(recipe)
        return None
    if recipe.launch.model not in QWEN3_SIZES:
        raise ValueError(f"launch.model={recipe.launch.model!r}: one of {sorted(QWEN3_SIZES)}")
    model, layout = QWEN3_SIZES[recipe.launch.model], training_layout(recipe)
    check_layout(model, layout)  # the model's own rules first: they name the real cause
    check_processes(recipe)
    check_colocated(recipe)
    check_vllm_engines(recipe)
    check_context(recipe)
    check_engines_exist(recipe)
    check_fp8_edge_layers(recipe, model.num_layers)
    return plan_memory(model, layout, rollout_placement(recipe), cluster).require_fit()


def check_paths_mounted(recipe: Recipe, mounts: tuple[str, ...]) -> None:
    """The run's files must be on a mounted (shared) file system inside the container: else
    checkpoints land in the container's throwaway file system and a requeue starts over."""
    from megatron_fork.data.prompt_sets import SYNTHETIC

    inside = [PurePosixPath(m.split(":")[1]) for m in mounts]
    config = recipe.config
    paths = {"base_model": config.base_model, "output_dir": config.output_dir}
    paths.update({f"data.{k}": getattr(config.data, k) for k in ("train", "eval")})
    for key, path in paths.items():
        if path == SYNTHETIC:
            continue
        if not any(PurePosixPath(path).is_relative_to(m) for m in inside):
            mounted = ", ".join(map(str, inside)) or "none"
            raise ValueError(
                f"{key}={path} is not under a container mount ({mounted}): add --mount "
                "HOST_DIR:CONTAINER_DIR covering it, or override the path"
            )
