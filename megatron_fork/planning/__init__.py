"""Memory and step-time planning for production layouts (pure Python, no torch).

``plan_memory`` gives the per-GPU bytes of a training layout and its rollout engines (from
Megatron's bytes-per-parameter table and Korthikanti et al.'s activation count, adapted to
Qwen3), at the packed micro-batch's token budget or the padded rows; ``estimate_step_time`` a
rough time per RL step, training costed at the packed (or padded) tokens of a length
distribution (``batch_cost``), ``compare_packing`` both; ``SUGGESTED_LAYOUTS`` the layouts the
recipes use for Qwen3-8B/14B/32B at 22.5k tokens on H100 80GB nodes. All numbers are estimates.
"""

from megatron_fork.planning.batch_cost import MiniBatchCost, mini_batch_cost
from megatron_fork.planning.layout import (
    H100_80GB,
    Cluster,
    RolloutPlacement,
    TrainingLayout,
    check_layout,
    check_rollout,
)
from megatron_fork.planning.memory import (
    EnginePlan,
    LayoutDoesNotFit,
    MemoryPlan,
    largest_budget,
    plan_memory,
)
from megatron_fork.planning.sizes import QWEN3_SIZES, ModelSize, padded_vocab_size
from megatron_fork.planning.step_time import (
    Efficiency,
    StepTimeEstimate,
    Workload,
    compare_packing,
    estimate_step_time,
)
from megatron_fork.planning.suggested import SUGGESTED_LAYOUTS

__all__ = [
    "H100_80GB",
    "QWEN3_SIZES",
    "SUGGESTED_LAYOUTS",
    "Cluster",
    "Efficiency",
    "EnginePlan",
    "LayoutDoesNotFit",
    "MemoryPlan",
    "MiniBatchCost",
    "ModelSize",
    "RolloutPlacement",
    "StepTimeEstimate",
    "TrainingLayout",
    "Workload",
    "check_layout",
    "check_rollout",
    "compare_packing",
    "estimate_step_time",
    "largest_budget",
    "mini_batch_cost",
    "padded_vocab_size",
    "plan_memory",
]
