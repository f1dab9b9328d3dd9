"""Where the work runs: the training layout (Megatron parallelism), the rollout engines and the
cluster. Frozen dataclasses, each checked on construction; ``check_layout`` checks a layout
against a model (the divisibility rules Megatron-Core asserts at start-up, here before a job
is queued)."""

import math
from dataclasses import dataclass

from megatron_fork.planning.sizes import ModelSize

RECOMPUTE = ("none", "selective", "full")
TRAINER_OFFLOAD = ("all", "optimizer", "none")
"""What a colocated trainer moves off the GPU while the engines generate (``colocation.py``)."""
ENGINE_BACKENDS = ("sglang", "vllm")
RECOMPUTE_MODULES = ("core_attn", "layernorm", "mlp")
"""Megatron-Core's ``recompute_modules`` that matter for a dense Qwen3 block."""


def _positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class TrainingLayout:
    """How Megatron-Core lays the actor out over the training GPUs."""

    tensor_parallel: int
    """t: TP size (keep it within one NVLink node: <= 8 on H100 nodes)."""
    pipeline_parallel: int
    """p: PP stages (1F1B schedule, not interleaved)."""
    context_parallel: int
    """c: CP size; each GPU holds s / c tokens of every sequence (load-balanced causal split)."""
    data_parallel: int
    """d: DP replicas. The world size is t * p * c * d."""
    sequence_parallel: bool
    """Megatron sequence parallelism (splits the norm/dropout region by t; needs t > 1)."""
    recompute: str
    """"none", "selective" (``recompute_modules``) or "full" (every layer keeps only its input)."""
    distributed_optimizer: bool
    """Shard fp32 master weights and Adam states over the DP x CP ranks (ZeRO-1)."""
    fp8: bool
    """Transformer Engine FP8 GEMMs (FP8 weight copies are added to memory; activation savings
    from FP8 inputs are not counted, so the plan stays conservative)."""
    micro_batch_size: int
    """b: sequences per micro-batch without packing (``max_tokens_per_microbatch=None``)."""
    sequence_length: int
    """s: the longest sample, prompt + response (e.g. 2048 + 20480 = 22528); without packing
    every row is padded to it."""
    logits_chunk_tokens: int = 512
    """Tokens per chunk of the log-prob/entropy op: two fp32 [chunk, V/t] buffers."""
    recompute_modules: tuple[str, ...] = ("core_attn",)
    """With recompute="selective": Megatron's ``recompute_modules`` (its default: core_attn)."""
    flash_attention: bool = True
    """Fused/flash attention (TE, sglang): the a * s^2 attention scores are never stored."""
    max_tokens_per_microbatch: int | None = None
    """Packing (``RLConfig.max_tokens_per_microbatch``): the packed length of one micro-batch,
    all CP ranks together; samples are packed back to back up to it (THD, ``cu_seqlens``).
    None: rows of ``micro_batch_size`` samples padded to ``sequence_length`` (packing=False)."""

    def __post_init__(self):
        _positive(
            "TrainingLayout",
            tensor_parallel=self.tensor_parallel,
            pipeline_parallel=self.pipeline_parallel,
            context_parallel=self.context_parallel,
            data_parallel=self.data_parallel,
            micro_batch_size=self.micro_batch_size,
            sequence_length=self.sequence_length,
            logits_chunk_tokens=self.logits_chunk_tokens,
        )
        if self.packing:
            _positive("TrainingLayout", max_tokens_per_microbatch=self.max_tokens_per_microbatch)
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"TrainingLayout.recompute must be one of {RECOMPUTE}")
        unknown = set(self.recompute_modules) - set(RECOMPUTE_MODULES)
        if unknown:
            raise ValueError(
                f"TrainingLayout.recompute_modules has {sorted(unknown)}: use {RECOMPUTE_MODULES}"
            )
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise ValueError(
                "TrainingLayout.sequence_parallel needs tensor_parallel > 1: set "
                "sequence_parallel=False or raise tensor_parallel."
            )

    @property
    def world_size(self) -> int:
        return (
            self.tensor_parallel * self.pipeline_parallel * self.context_parallel
        ) * self.data_parallel

    @property
    def model_parallel_size(self) -> int:
        """GPUs holding one copy of the model: t * p * c."""
        return self.tensor_parallel * self.pipeline_parallel * self.context_parallel

    @property
    def packing(self) -> bool:
        return self.max_tokens_per_microbatch is not None

    @property
    def micro_batch_tokens(self) -> int:
        """Positions of one micro-batch, all CP ranks together: the packing budget, else
        ``micro_batch_size`` rows of ``sequence_length``. Each GPU holds 1 / CP of them."""
        if self.packing:
            return self.max_tokens_per_microbatch
        return self.sequence_length * self.micro_batch_size

    @property
    def row_multiple(self) -> int:
        """What a row (a packed micro-batch) is padded to, as the trainer's
        ``train_batch.layout_row_multiple``: 8; 2 x CP; TP x CP with sequence parallelism;
        with FP8, 128 local rows (blockwise scaling, the recipes' scheme) x TP x CP."""
        t, c = self.tensor_parallel if self.sequence_parallel else 1, self.context_parallel
        multiple = math.lcm(8, 2 * c if c > 1 else 1, t * c)
        return math.lcm(multiple, 128 * t * c) if self.fp8 else multiple

    @property
    def sample_multiple(self) -> int:
        """What each packed sample is padded to: 2 x CP (TE's THD CP split), else 1."""
        return 2 * self.context_parallel if self.context_parallel > 1 else 1


@dataclass(frozen=True)
class RolloutPlacement:
    """Where the sglang engines run and how they hold the model."""

    colocated: bool
    """Engines share the training GPUs (one engine per engine_tensor_parallel training GPUs)."""
    engines: int
    """Number of engine processes (each serves the whole model)."""
    engine_tensor_parallel: int
    """GPUs per engine (sglang --tp)."""
    fp8_weights: bool
    """Engines serve blockwise-FP8 linear weights (embeddings, norms, output layer stay bf16)."""
    mem_fraction_static: float = 0.8
    """sglang's share of a GPU's total memory for weights + KV cache; the rest is its working
    memory (activations, CUDA graphs)."""
    release_between_phases: bool = False
    """Colocated only: engines release their memory while the trainer runs (sglang's
    release_memory_occupation) and the trainer frees/offloads its state while they generate."""
    trainer_offload: str = "all"
    """Colocated with release: what the trainer moves to host memory while the engines generate
    (``colocation.TRAINER_OFFLOAD``): "all" (bf16 weights and optimizer state to host, gradient
    buffers freed: slime's, verl's and NeMo-RL's default), "optimizer" (the bf16 weights stay,
    gradients freed, optimizer state to host) or "none" (everything stays)."""
    engine_backend: str = "sglang"
    """"sglang" or "vllm": what a released engine still holds (``colocation``)."""

    def __post_init__(self):
        _positive(
            "RolloutPlacement",
            engines=self.engines,
            engine_tensor_parallel=self.engine_tensor_parallel,
        )
        if self.trainer_offload not in TRAINER_OFFLOAD:
            raise ValueError(f"RolloutPlacement.trainer_offload must be one of {TRAINER_OFFLOAD}")
        if self.engine_backend not in ENGINE_BACKENDS:
            raise ValueError(f"RolloutPlacement.engine_backend must be one of {ENGINE_BACKENDS}")
        if not 0.0 < self.mem_fraction_static < 1.0:
            raise ValueError(
                f"RolloutPlacement.mem_fraction_static must be in (0, 1), got "
                f"{self.mem_fraction_static}: sglang uses 0.8-0.9 alone on a GPU."
            )
        if self.release_between_phases and not self.colocated:
            raise ValueError(
                "RolloutPlacement.release_between_phases only applies to colocated engines: "
                "set colocated=True or release_between_phases=False."
            )

    @property
    def gpus(self) -> int:
        return self.engines * self.engine_tensor_parallel


@dataclass(frozen=True)
class Cluster:
    """The GPUs and links. Bandwidths are per GPU and one direction."""

    gpu_memory_gib: float
    """Memory one GPU reports (nvidia-smi's total), GiB."""
    nodes: int
    """Nodes available to the job."""
    gpus_per_node: int
    """GPUs per node (one NVLink domain)."""
    intra_node_gbps: float
    """NVLink bandwidth per GPU, GB/s (1e9 bytes/s)."""
    inter_node_gbps: float
    """InfiniBand bandwidth per GPU, GB/s."""
    peak_bf16_tflops: float
    """Dense BF16 tensor-core peak, TFLOP/s."""
    hbm_tbps: float
    """HBM bandwidth, TB/s."""
    reserved_gib: float
    """Memory the plan cannot use: CUDA context, NCCL buffers, allocator fragmentation, GiB."""
    host_gbps: float = 64.0
    """GPU <-> host memory bandwidth per GPU, GB/s, one direction: PCIe Gen5 x16 on H100 SXM
    (what a colocated trainer's offload and reload cross)."""

    def __post_init__(self):
        _positive("Cluster", nodes=self.nodes, gpus_per_node=self.gpus_per_node)
        positive = ("gpu_memory_gib", "intra_node_gbps", "inter_node_gbps", "host_gbps")
        for name in positive + ("peak_bf16_tflops", "hbm_tbps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Cluster.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.reserved_gib < self.gpu_memory_gib:
            raise ValueError(
                f"Cluster.reserved_gib must be in [0, gpu_memory_gib), got {self.reserved_gib}"
            )

    @property
    def gpu_bytes(self) -> int:
        return int(self.gpu_memory_gib * 2**30)

    @property
    def usable_bytes(self) -> int:
        """What a plan may fill: the GPU's memory less ``reserved_gib``."""
        return int((self.gpu_memory_gib - self.reserved_gib) * 2**30)

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


H100_80GB = Cluster(
    # "80GB" H100 SXM5 (HBM3): nvidia-smi reports 81559 MiB = 79.65 GiB in total.
    gpu_memory_gib=81559 / 1024,
    nodes=16,  # the paper's 16 nodes x 8 GPUs
    gpus_per_node=8,
    intra_node_gbps=450.0,  # NVLink 4: 900 GB/s bidirectional per GPU
    inter_node_gbps=50.0,  # one 400 Gb/s NDR InfiniBand NIC per GPU
    peak_bf16_tflops=989.0,  # dense BF16, SXM5
    hbm_tbps=3.35,
    # CUDA context (~0.5 GiB), NCCL communicators and buffers for the TP/PP/CP/DP groups
    # (~1-2 GiB), allocator fragmentation and TE workspaces (a few GiB) -> 6 GiB kept free.
    reserved_gib=6.0,
)
"""An H100 SXM5 80GB cluster (HGX nodes of 8 GPUs, NDR InfiniBand)."""


def _divisors(n: int, limit: int = 8) -> list[int]:
    return [k for k in range(1, limit + 1) if n % k == 0]


def _divides_all(model: ModelSize, t: int) -> bool:
    sizes = (model.num_attention_heads, model.num_query_groups, model.ffn_hidden_size)
    return all(size % t == 0 for size in sizes)


def check_layout(model: ModelSize, layout: TrainingLayout) -> None:
    """Raise ValueError naming what to change if Megatron-Core would refuse ``layout``."""
    t, s, c = layout.tensor_parallel, layout.sequence_length, layout.context_parallel
    for name, value in (
        ("num_attention_heads", model.num_attention_heads),
        ("num_query_groups (kv heads)", model.num_query_groups),
        ("ffn_hidden_size", model.ffn_hidden_size),
    ):
        if value % t:
            good = [k for k in _divisors(model.num_query_groups) if _divides_all(model, k)]
            raise ValueError(
                f"tensor_parallel={t} does not divide {name}={value}: use a TP size that "
                f"divides the heads and kv heads, one of {good}."
            )
    if model.num_layers % layout.pipeline_parallel:
        raise ValueError(
            f"pipeline_parallel={layout.pipeline_parallel} does not divide num_layers="
            f"{model.num_layers}: use one of {_divisors(model.num_layers, model.num_layers)}."
        )
    if layout.packing:
        _check_budget(layout)
        s, name = layout.max_tokens_per_microbatch, "max_tokens_per_microbatch"
    else:
        name = "sequence_length"
    if c > 1 and s % (2 * c):
        raise ValueError(
            f"{name}={s} is not divisible by 2 * context_parallel = {2 * c} (CP splits "
            f"each sequence into 2 * CP chunks): pad {name} to a multiple of {2 * c} "
            f"or change context_parallel."
        )
    if layout.sequence_parallel and (s // c) % t:
        raise ValueError(
            f"with sequence_parallel, the {s // c} tokens per CP rank must divide by "
            f"tensor_parallel={t}: pad {name} to a multiple of {c * t} (x2 with CP)."
        )


def _check_budget(layout: TrainingLayout) -> None:
    """A packed micro-batch must hold the longest sample: a longer one would be trained alone
    in a micro-batch of its own length, which the memory plan (made at the budget) never saw."""
    budget, longest = layout.max_tokens_per_microbatch, layout.sequence_length
    if budget < longest:
        fitting = -(-longest // layout.row_multiple) * layout.row_multiple
        raise ValueError(
            f"max_tokens_per_microbatch={budget} is below the longest sample (prompt + "
            f"response, sequence_length={longest}): it would train alone in a micro-batch the "
            f"memory plan does not cover; raise max_tokens_per_microbatch to at least {fitting}."
        )


def check_rollout(model: ModelSize, rollout: RolloutPlacement, layout: TrainingLayout) -> None:
    """Raise ValueError naming what to change if sglang or the placement would refuse it."""
    et = rollout.engine_tensor_parallel
    if model.num_attention_heads % et:
        raise ValueError(
            f"engine_tensor_parallel={et} does not divide num_attention_heads="
            f"{model.num_attention_heads}: use one of {_divisors(model.num_attention_heads)}."
        )
    if et > model.num_query_groups and et % model.num_query_groups:
        raise ValueError(
            f"engine_tensor_parallel={et} is above the {model.num_query_groups} kv heads but "
            "not a multiple of them: sglang cannot replicate kv heads evenly."
        )
    if rollout.colocated and rollout.gpus != layout.world_size:
        raise ValueError(
            f"colocated engines need engines * engine_tensor_parallel = the {layout.world_size} "
            f"training GPUs, got {rollout.engines} x {et}: set engines={layout.world_size // et}."
        )
