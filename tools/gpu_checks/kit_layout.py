"""How the kit fits a Qwen3 recipe onto one 8-GPU node beside one sglang engine (pure Python).

A recipe's layout spans 8 to 32 training GPUs (``megatron_fork.planning.SUGGESTED_LAYOUTS``);
the kit keeps as much of it as fits half the node and gives the other half to one engine:

1. PP is kept, at most 2: the PP=2 weight sync over NCCL (each stage's leader broadcasting its
   own stage to the engine) is what qwen3_32b brings that no other recipe does.
2. If TP x PP x CP is over half the node, CP drops to 1 (qwen3_8b keeps TP2 x CP2, so CP=2 is
   still checked), then TP halves until it fits (never below 2: sequence parallelism needs it).
3. The engine gets the recipe's engine TP, at most the GPUs left; it sits on the GPUs after the
   training ranks'.

Result (8 GPUs): qwen3_8b TP2 x CP2 + engine TP2 (6 GPUs); qwen3_14b TP4 + engine TP4 (8);
qwen3_32b TP2 x PP2 + engine TP4 (8). DP is 1 everywhere (the distributed optimizer still
shards over DP x CP: 2 ways for qwen3_8b, 1 for the others).
"""

from dataclasses import dataclass

NODE_GPUS = 8
KIT_LAYERS = 2
"""Transformer layers of the kit's models: one per stage at PP=2. With the recipes' one bf16
layer at each end no layer would run FP8, so the kit sets ``precision.bf16_edge_layers=0``."""
KIT_VOCAB = 16384
"""The kit's vocabulary (a multiple of 128 x 8): Qwen3's 151936 would make each checkpoint with
optimizer state several times larger (the op check covers the full vocabulary)."""


@dataclass(frozen=True)
class KitLayout:
    tensor_parallel: int
    pipeline_parallel: int
    context_parallel: int
    engine_tensor_parallel: int

    @property
    def train_gpus(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel * self.context_parallel

    @property
    def gpus(self) -> int:
        """Training ranks + the engine's GPUs."""
        return self.train_gpus + self.engine_tensor_parallel

    def describe(self) -> str:
        parts = [f"TP{self.tensor_parallel}"]
        parts += [f"PP{self.pipeline_parallel}"] * (self.pipeline_parallel > 1)
        parts += [f"CP{self.context_parallel}"] * (self.context_parallel > 1)
        return " x ".join(parts) + f" + engine TP{self.engine_tensor_parallel}"


def kit_layout(
    tensor_parallel: int,
    pipeline_parallel: int,
    context_parallel: int,
    engine_tensor_parallel: int,
    node_gpus: int = NODE_GPUS,
) -> KitLayout:
    """The recipe's layout cut down by the rules of the module docstring."""
    budget = node_gpus // 2
    tp, pp, cp = tensor_parallel, min(pipeline_parallel, 2), context_parallel
    if tp * pp * cp > budget:
        cp = 1
    while tp * pp * cp > budget and tp > 2:
        tp //= 2
    if tp * pp * cp > budget:
        raise ValueError(f"TP{tp} x PP{pp} does not fit half of a {node_gpus}-GPU node")
    engine = min(engine_tensor_parallel, node_gpus - tp * pp * cp)
    return KitLayout(tp, pp, cp, engine)


def recipe_kit_layout(name: str, node_gpus: int = NODE_GPUS) -> KitLayout:
    """The kit layout of a Qwen3 recipe, from the layouts the recipes are built from."""
    from megatron_fork.planning import SUGGESTED_LAYOUTS  # pure Python, no torch

    training, rollout, _, _ = SUGGESTED_LAYOUTS[name]
    return kit_layout(
        training.tensor_parallel,
        training.pipeline_parallel,
        training.context_parallel,
        rollout.engine_tensor_parallel,
        node_gpus,
    )


def kit_recipes() -> list[str]:
    """The Qwen3 recipes the node checks cover, smallest first (the planner's order)."""
    from megatron_fork.planning import SUGGESTED_LAYOUTS

    return list(SUGGESTED_LAYOUTS)
