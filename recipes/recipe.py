"""A recipe: the run config (``RLConfig``, what the trainer reads) plus where it runs
(``LaunchSpec``: nodes, GPUs, rollout engines). One frozen value, overridable with the same
``section.field=value`` keys as the trainer (``launch.*`` for the launch spec), and checked
before anything is launched."""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from megatron_fork.rl.overrides import apply_overrides
from megatron_fork.rl.rl_config import RLConfig


@dataclass(frozen=True)
class EngineSpec:
    """Rollout engines on their own nodes (disaggregated from the trainer): sglang or vLLM, as
    ``rollout.backend`` says (the trainer and every engine task read the same recipe)."""

    nodes: int = 0
    """Nodes of the engines' Slurm node group; 0 = no separate engines (the in-process torch
    engine of the CPU default)."""
    tensor_parallel: int = 1
    """GPUs per engine (sglang --tp-size, vLLM --tensor-parallel-size)."""
    mem_fraction_static: float = 0.85
    """sglang's share of each GPU for weights + KV cache."""
    gpu_memory_utilization: float = 0.85
    """vLLM's share of each GPU (weights, activations, KV cache); the rest holds the
    weight-transfer buffers, which vLLM does not measure."""
    batch_invariant: bool = False
    """vLLM only: ``VLLM_BATCH_INVARIANT=1``, outputs independent of the batch, so a step's seeds
    replay it exactly (sglang engines always run deterministic inference). Slower; with NCCL
    older than 2.29.7 the trainer must also set vLLM's NCCL_* pins (``vllm_launch.py``)."""
    port: int = 30000
    """The first engine of a node listens here, the next on port + 1, ..."""

    def __post_init__(self):
        if self.nodes < 0 or self.tensor_parallel < 1:
            raise ValueError("launch.engines.nodes must be >= 0 and tensor_parallel >= 1")
        if not 0 < self.mem_fraction_static < 1:
            raise ValueError("launch.engines.mem_fraction_static must be in (0, 1)")
        if not 0 < self.gpu_memory_utilization < 1:
            raise ValueError("launch.engines.gpu_memory_utilization must be in (0, 1)")


@dataclass(frozen=True)
class LaunchSpec:
    model: str | None = None
    """Key into ``megatron_fork.planning.QWEN3_SIZES`` (the planner's shapes); None = a model
    too small to plan (the CPU default)."""
    train_nodes: int = 1
    gpus_per_node: int = 8
    """GPUs per node (on CPU: processes per node)."""
    context_tokens: int = 22528
    """Longest prompt + response a row may hold (2048 + 20480 in the paper's recipe): the
    sequence length the memory plan and Megatron's CP/SP divisibility rules are checked at."""
    engines: EngineSpec = field(default_factory=EngineSpec)
    time: str = "04:00:00"
    """Slurm time limit of one job (the run resumes from its last checkpoint after a requeue)."""

    def __post_init__(self):
        if self.train_nodes < 1 or self.gpus_per_node < 1 or self.context_tokens < 2:
            raise ValueError("launch.train_nodes, gpus_per_node must be >= 1, context_tokens >= 2")

    @property
    def world_size(self) -> int:
        return self.train_nodes * self.gpus_per_node

    @property
    def engines_per_node(self) -> int:
        return self.gpus_per_node // self.engines.tensor_parallel

    @property
    def engine_count(self) -> int:
        return self.engines.nodes * self.engines_per_node


@dataclass(frozen=True)
class _LaunchSection:
    """``launch.*`` overrides apply here, so their errors name the full key."""

    launch: LaunchSpec = field(default_factory=LaunchSpec)


@dataclass(frozen=True)
class Recipe:
    name: str
    config: RLConfig
    launch: LaunchSpec
    summary: str = ""
    """One line: what the recipe reproduces."""
    prepare: Callable[[RLConfig], None] | None = None
    """Run on the launching machine before a local launch (the CPU default warm-starts its
    base model here)."""

    def with_overrides(self, overrides: list[str]) -> "Recipe":
        """``launch.x=v`` keys change the launch spec, every other key the run config; the
        result is validated as a whole (config rules here, layout rules in ``checks``)."""
        launch_items = [o for o in overrides if o.startswith("launch.")]
        config_items = [o for o in overrides if not o.startswith("launch.")]
        launch = apply_overrides(_LaunchSection(self.launch), launch_items).launch
        return dataclasses.replace(
            self, config=apply_overrides(self.config, config_items), launch=launch
        )

    @property
    def data_parallel(self) -> int:
        return self.launch.world_size // self.config.parallel.model_parallel_size
