"""The trainer's own settings, shared by every run that builds an actor (the RL run's
``RLConfig`` composes them; the warm start, conversion and the tools use them alone): the
optimizer, how Megatron-Core lays the model out, and the number formats. Field names are the
override keys (``optimizer.lr``, ``parallel.tensor_parallel``, ``precision.fp8``)."""

from dataclasses import dataclass

from megatron_fork.planning.layout import RECOMPUTE, RECOMPUTE_MODULES


def require(condition: bool, message: str) -> None:
    """A config check: ValueError with ``message`` (naming the key) when it fails."""
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class OptimizerSettings:
    lr: float = 1e-6
    weight_decay: float = 0.1
    clip_grad: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    """Linear learning-rate warm-up over this many RL steps, then constant (the paper's script:
    10; verl's scheduler steps once per RL step, so every mini-batch of a step shares its rate)."""

    def __post_init__(self):
        require(self.warmup_steps >= 0, "optimizer.warmup_steps must be >= 0")


RECOMPUTE_CHOICES = RECOMPUTE  # one list with the planner, which models each choice


@dataclass(frozen=True)
class ParallelConfig:
    """How Megatron-Core lays the model out over the ranks. Data parallelism is what is left:
    world size / (TP x PP x CP)."""

    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    context_parallel: int = 1
    """Splits every sequence over this many ranks (Megatron's load-balanced 2 x CP chunks);
    needs Transformer Engine's attention, i.e. a GPU."""
    sequence_parallel: bool = False
    """Shards LayerNorm/dropout activations over the TP ranks (needs TP > 1)."""
    recompute: str = "none"
    """Activation recomputation: "none"; "selective" (the ``recompute_modules`` of every layer);
    "full" (every layer keeps only its input and is recomputed in the backward)."""
    recompute_modules: tuple[str, ...] = ("core_attn",)
    """With recompute="selective", Megatron's ``recompute_modules``. "core_attn" (Korthikanti
    et al. 2022) saves little when flash attention already avoids storing the scores (TE on
    GPUs); "mlp" drops the SwiGLU block's activations, the largest part of a Qwen3 layer."""
    distributed_optimizer: bool = False
    """Shards the fp32 main weights and Adam states over the data-parallel ranks (ZeRO-1)."""
    vocab_multiple: int = 128
    """The vocabulary is padded to a multiple of this times TP (Megatron's rule)."""
    collective_timeout_minutes: float = 60.0
    """How long a rank waits in a collective: the trainer ranks wait through rank 0's rollout
    and evaluation, which with long chains of thought take far longer than NCCL's default."""

    def __post_init__(self):
        for name in ("tensor_parallel", "pipeline_parallel", "context_parallel"):
            require(getattr(self, name) >= 1, f"parallel.{name} must be >= 1")
        require(
            self.recompute in RECOMPUTE_CHOICES,
            f"parallel.recompute must be one of {RECOMPUTE_CHOICES}, got {self.recompute!r}",
        )
        require(
            not self.sequence_parallel or self.tensor_parallel > 1,
            "parallel.sequence_parallel needs parallel.tensor_parallel > 1",
        )
        unknown = set(self.recompute_modules) - set(RECOMPUTE_MODULES)
        require(
            not unknown,
            f"parallel.recompute_modules: {sorted(unknown)} unknown, use {RECOMPUTE_MODULES}",
        )

    @property
    def model_parallel_size(self) -> int:
        """Ranks holding one copy of the model: TP x PP x CP."""
        return self.tensor_parallel * self.pipeline_parallel * self.context_parallel


FP8_FORMATS = ("none", "e4m3", "hybrid")
FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")


@dataclass(frozen=True)
class PrecisionConfig:
    """Training number formats. The defaults (fp32, no FP8) are the CPU's; GPU recipes train in
    bf16 with fp32 main weights and gradients, FP8 through Transformer Engine."""

    params: str = "fp32"
    """"fp32" or "bf16" (bf16 weights and activations; the optimizer keeps fp32 main weights,
    gradients are reduced in fp32). Log-probs, entropies and the loss are fp32 either way."""
    fp8: str = "none"
    """Transformer Engine FP8 for the linear layers of the transformer blocks: "none", "e4m3"
    (forward and backward), "hybrid" (e4m3 forward, e5m2 gradients). Needs bf16 params."""
    fp8_recipe: str = "blockwise"
    """TE scaling recipe: "blockwise" (1x128 / 128x128 blocks, Hopper; the scheme sglang's FP8
    engines serve), "tensorwise", "delayed", "mxfp8" (Blackwell)."""
    bf16_edge_layers: int = 1
    """With FP8, this many transformer layers at each end stay bf16 (the most sensitive)."""

    def __post_init__(self):
        require(self.params in ("fp32", "bf16"), "precision.params must be 'fp32' or 'bf16'")
        require(self.fp8 in FP8_FORMATS, f"precision.fp8 must be one of {FP8_FORMATS}")
        require(
            self.fp8_recipe in FP8_RECIPES, f"precision.fp8_recipe must be one of {FP8_RECIPES}"
        )
        require(
            self.fp8 == "none" or self.params == "bf16",
            "precision.fp8 needs precision.params=bf16 (FP8 GEMMs on bf16 master copies)",
        )
        require(self.bf16_edge_layers >= 0, "precision.bf16_edge_layers must be >= 0")
        require(
            not (self.fp8 != "none" and self.fp8_recipe == "delayed" and self.bf16_edge_layers),
            "precision.fp8_recipe=delayed cannot keep edge layers in bf16 (Megatron refuses it):"
            " set precision.bf16_edge_layers=0 or another recipe",
        )
