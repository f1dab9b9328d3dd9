"""Per-GPU memory of an RL step: the most loaded training GPU, and the rollout engine's GPUs.

Model state, bytes per local parameter, from Megatron-LM's
``docs/source/api-guide/dist_optimizer.md`` (row "bf16 parameters, fp32 gradients"): 18 with
the plain optimizer, 6 + 12/d with the distributed one = 2 (bf16 weight) + 4 (fp32 main
gradient) + 12 (fp32 master weight, Adam m and v) sharded over d. Megatron-Core shards it over
the data-parallel x context-parallel group (CP ranks hold the same weights), so d = DP * CP.
Local parameters follow Megatron-LM's ``theoretical_memory_usage.py``: the stage's layers / t
plus the embedding (first stage) or final norm + output layer (last stage), with the
vocabulary padded to a multiple of 128 * t; norms are replicated over TP.

Activations: ``activations.py`` (Korthikanti et al. 2022, adapted to Qwen3's block) times the
layers of the stage times the micro-batches in flight: under 1F1B, stage k of p holds p - k,
so the first stage holds p (Korthikanti et al. 2022; ``theoretical_memory_usage.py`` computes
the first stage with "pp_size microbatches in flight"), assuming at least p micro-batches.
Each GPU holds 1 / CP of a micro-batch's tokens: packed, the budget
``max_tokens_per_microbatch`` (the most a packed micro-batch holds); padded, s * b. On top: one
layer's full activations as the working set of a layer's backward (with full recomputation:
the recomputed layer), and on the last stage the output layer's input, the bf16 logits
[tokens, V/t] and their gradient (together Megatron's 4*s*b*V/t for fp32 logits) and the loss
op's two fp32 [chunk, V/t] buffers (``megatron_fork/ops/logprob_entropy.py``).
A micro-batch's own inputs (ids, targets, advantages: ~50 bytes/token, under 1 MiB) and the
pipeline's send/receive buffers are left out.

Rollout engines (sglang): weights / engine TP (fp8: linear weights 1 byte + one fp32 scale per
128 x 128 block; embeddings, norms, output layer bf16) and a KV cache filling the rest of
``mem_fraction_static`` of the GPU: 2 * L * kv_heads * head_dim * 2 bytes per token (bf16).
Colocated engines without release add that pool to the training peak; with release the peak
is the largest of the step's phases (training, weight sync, rollout: ``colocation.py``, which
also says what the trainer keeps during rollout and what released engines keep). Everything
is an estimate: allocator behaviour, NCCL and kernel workspaces are covered only by
``Cluster.reserved_gib``.
"""

import dataclasses
import math
from dataclasses import dataclass, field

from megatron_fork.planning.activations import layer_bytes_per_token, qwen3_block
from megatron_fork.planning.colocation import (
    FP8_COPIES,
    GRADIENTS,
    OPTIMIZER,
    WEIGHTS,
    phase_breakdowns,
)
from megatron_fork.planning.layout import (
    Cluster,
    RolloutPlacement,
    TrainingLayout,
    check_layout,
    check_rollout,
)
from megatron_fork.planning.report import GIB, memory_table, suggestions
from megatron_fork.planning.sizes import ModelSize, padded_vocab_size

FP8_SCALE_BYTES_PER_WEIGHT = 4 / (128 * 128)
"""One fp32 scale per 128 x 128 block of an fp8 weight."""


class LayoutDoesNotFit(ValueError):
    """The planned memory exceeds a GPU; the message has the breakdown and what to change."""


@dataclass(frozen=True)
class EnginePlan:
    """One rollout engine GPU: its static pool (weights + KV cache)."""

    breakdown: dict[str, int]
    """"engine weights" and "KV cache" bytes on one engine GPU."""
    kv_tokens: int
    """Tokens the KV cache holds (all sequences on the engine together)."""
    kv_sequences: int
    """Full-length sequences (``sequence_length`` tokens) the KV cache holds at once."""
    pool: int
    """mem_fraction_static * GPU memory: what sglang takes for weights + KV cache."""

    @property
    def total(self) -> int:
        return sum(self.breakdown.values())

    @property
    def fits(self) -> bool:
        return self.kv_sequences >= 1


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU bytes of the most loaded training GPU (and of an engine GPU)."""

    breakdown: dict[str, int]
    """Training phase, name -> bytes on the most loaded training GPU."""
    capacity: int
    """Usable bytes of one GPU (its memory less ``Cluster.reserved_gib``)."""
    stage: str
    """Which pipeline stage is the most loaded ("first", "last" or "only")."""
    engine: EnginePlan | None = None
    """The engine's share of a GPU: on the training GPUs when colocated, else its own GPUs."""
    colocated: bool = False
    """The engine shares the training GPUs."""
    concurrent: bool = False
    """Colocated without release: the engine pool stays allocated during training."""
    notes: tuple[str, ...] = field(default=())
    """Assumptions worth reading next to the numbers."""
    layout: TrainingLayout | None = None
    """The layout planned (for the advice of ``require_fit``)."""
    phases: dict[str, dict[str, int]] = field(default_factory=dict)
    """Colocated with release: each phase's bytes on a GPU (``colocation.phase_breakdowns``)."""
    trainer_offload: str = "all"
    """Colocated with release: what the trainer moves to host while the engines generate."""

    @property
    def training_total(self) -> int:
        return sum(self.breakdown.values())

    @property
    def phase_totals(self) -> dict[str, int]:
        return {name: sum(parts.values()) for name, parts in self.phases.items()}

    @property
    def total(self) -> int:
        """Peak bytes on a training GPU."""
        if not self.colocated:
            return self.training_total
        if self.concurrent:
            return self.training_total + self.engine.pool
        return max(self.phase_totals.values())

    @property
    def fits(self) -> bool:
        engine_ok = self.engine is None or self.engine.fits
        return self.total <= self.capacity and engine_ok

    def table(self) -> str:
        """A readable breakdown in GiB (an estimate, said so)."""
        return memory_table(self)

    def as_dict(self) -> dict:
        engine = None
        if self.engine is not None:
            engine = {
                "breakdown": dict(self.engine.breakdown),
                "kv_tokens": self.engine.kv_tokens,
                "kv_sequences": self.engine.kv_sequences,
                "pool": self.engine.pool,
            }
        return {
            "breakdown": dict(self.breakdown),
            "stage": self.stage,
            "training_total": self.training_total,
            "total": self.total,
            "capacity": self.capacity,
            "fits": self.fits,
            "colocated": self.colocated,
            "concurrent": self.concurrent,
            "engine": engine,
            "phases": {name: dict(parts) for name, parts in self.phases.items()},
            "notes": list(self.notes),
        }

    def require_fit(self) -> "MemoryPlan":
        """Return self, or raise LayoutDoesNotFit with the table and what to change."""
        if self.fits:
            return self
        advice = "\n".join(f"  - {line}" for line in suggestions(self))
        raise LayoutDoesNotFit(
            f"layout does not fit ({self.total / GIB:.1f} GiB needed, {self.capacity / GIB:.1f}"
            f" GiB usable per GPU):\n{self.table()}\nWhat to change:\n{advice}"
        )


def _local_parameters(model: ModelSize, layout: TrainingLayout, first: bool, last: bool):
    """(all, linear) parameters on one GPU of a stage."""
    t, p = layout.tensor_parallel, layout.pipeline_parallel
    layers = model.num_layers // p
    vocab_shard = padded_vocab_size(model.vocab_size, t) * model.hidden_size / t
    linear = layers * model.layer_linear_parameters() / t
    total = linear + layers * model.layer_norm_parameters()
    if first:
        total += vocab_shard
    if last:
        total += model.hidden_size  # final norm
        if not model.tie_embeddings or not first:  # tied + PP keeps a copy on the last stage
            total += vocab_shard
    return total, linear


def _state_bytes(model, layout, first, last) -> dict[str, float]:
    params, linear = _local_parameters(model, layout, first, last)
    shards = layout.data_parallel * layout.context_parallel if layout.distributed_optimizer else 1
    state = {WEIGHTS: 2 * params, GRADIENTS: 4 * params, OPTIMIZER: 12 * params / shards}
    if layout.fp8:
        state[FP8_COPIES] = 2 * linear
    return state


def _activation_bytes(model, layout, stage_index) -> dict[str, float]:
    t, p, sp = layout.tensor_parallel, layout.pipeline_parallel, layout.sequence_parallel
    tokens = layout.micro_batch_tokens / layout.context_parallel
    in_flight = p - stage_index
    block = qwen3_block(model)
    common = (layout.sequence_length, t, sp)
    per_layer = layer_bytes_per_token(
        block, *common, layout.recompute, layout.recompute_modules, layout.flash_attention
    )
    working = layer_bytes_per_token(block, *common, flash=layout.flash_attention)
    layers = model.num_layers // p
    return {
        f"activations ({layers} layers x {in_flight} in flight)": per_layer
        * tokens
        * layers
        * in_flight,
        "backward working set (one layer)": working * tokens,
    }


def _loss_bytes(model, layout) -> dict[str, float]:
    t = layout.tensor_parallel
    tokens = layout.micro_batch_tokens / layout.context_parallel
    vocab_local = padded_vocab_size(model.vocab_size, t) / t
    h_local = model.hidden_size / (t if layout.sequence_parallel else 1)
    return {
        "final norm + output layer inputs": 4 * h_local * tokens,
        "logits bf16 [tokens, V/t] + gradient": 4 * vocab_local * tokens,
        "loss op chunks (2 x fp32 [chunk, V/t])": 8 * layout.logits_chunk_tokens * vocab_local,
    }


def training_breakdown(model: ModelSize, layout: TrainingLayout, stage_index: int) -> dict:
    """Bytes on one GPU of pipeline stage ``stage_index`` during training."""
    p = layout.pipeline_parallel
    first, last = stage_index == 0, stage_index == p - 1
    parts = _state_bytes(model, layout, first, last) | _activation_bytes(model, layout, stage_index)
    if last:
        parts |= _loss_bytes(model, layout)
    return {name: int(math.ceil(value)) for name, value in parts.items()}


def engine_weight_bytes(model: ModelSize, fp8: bool) -> float:
    """The whole model as an engine holds it (bf16, or fp8 linear layers)."""
    linear = model.num_layers * model.layer_linear_parameters()
    rest = model.parameters() - linear
    if not fp8:
        return 2.0 * model.parameters()
    return linear * (1 + FP8_SCALE_BYTES_PER_WEIGHT) + 2.0 * rest


def plan_engine(model: ModelSize, rollout: RolloutPlacement, cluster: Cluster, seq_len: int):
    """One engine GPU: weights shard and the KV cache in the rest of the static pool."""
    tp = rollout.engine_tensor_parallel
    weights = int(engine_weight_bytes(model, rollout.fp8_weights) / tp)
    pool = int(rollout.mem_fraction_static * cluster.gpu_bytes)
    kv = max(pool - weights, 0)
    kv_tokens = kv // model.kv_cache_bytes_per_token(2, tp)
    return EnginePlan(
        {"engine weights": weights, "KV cache": kv}, kv_tokens, kv_tokens // seq_len, pool
    )


def plan_memory(
    model: ModelSize, layout: TrainingLayout, rollout: RolloutPlacement, cluster: Cluster
) -> MemoryPlan:
    """The per-GPU memory plan of a layout (checks divisibility first)."""
    check_layout(model, layout)
    check_rollout(model, rollout, layout)
    p, c = layout.pipeline_parallel, layout.context_parallel
    candidates = {"only": 0} if p == 1 else {"first": 0, "last": p - 1}
    stages = {name: training_breakdown(model, layout, k) for name, k in candidates.items()}
    stage = max(stages, key=lambda name: sum(stages[name].values()))
    engine = plan_engine(model, rollout, cluster, layout.sequence_length)
    notes = [
        f"optimizer sharded over DP x CP = {layout.data_parallel * layout.context_parallel}"
        if layout.distributed_optimizer
        else "optimizer replicated on every DP rank",
        "flash attention: no a*s^2 scores stored"
        if layout.flash_attention
        else "no flash attention: a*s^2 scores stored",
    ]
    if layout.packing:
        notes.append(
            f"packed micro-batches of up to max_tokens_per_microbatch="
            f"{layout.max_tokens_per_microbatch} tokens, {layout.micro_batch_tokens // c} "
            "per CP rank"
        )
    else:
        notes.append(f"padded rows: {layout.micro_batch_size} x {layout.sequence_length} tokens")
    if p > 1:
        notes.append(f"1F1B: {p} micro-batches in flight on the first stage (>= {p} per step)")
    released = rollout.colocated and rollout.release_between_phases
    phases = phase_breakdowns(stages[stage], engine.breakdown, rollout) if released else {}
    if released:
        notes.append(
            f"colocated: trainer_offload={rollout.trainer_offload!r}, released "
            f"{rollout.engine_backend} engines and the offloaded trainer keep fixed residues"
        )
    return MemoryPlan(
        breakdown=stages[stage],
        capacity=cluster.usable_bytes,
        stage=stage,
        engine=engine,
        colocated=rollout.colocated,
        concurrent=rollout.colocated and not rollout.release_between_phases,
        notes=tuple(notes),
        layout=layout,
        phases=phases,
        trainer_offload=rollout.trainer_offload,
    )


def largest_budget(
    model: ModelSize, layout: TrainingLayout, rollout: RolloutPlacement, cluster: Cluster
) -> int | None:
    """The largest ``max_tokens_per_microbatch`` (a multiple of ``layout.row_multiple``, at
    least ``sequence_length``) whose plan fits, or None if not even the smallest does."""
    unit = layout.row_multiple
    budget, best = -(-layout.sequence_length // unit) * unit, None
    while budget <= 64 * layout.sequence_length:  # memory grows with the budget: stop at a miss
        packed = dataclasses.replace(layout, max_tokens_per_microbatch=budget)
        if not plan_memory(model, packed, rollout, cluster).fits:
            break
        best, budget = budget, budget + unit
    return best
