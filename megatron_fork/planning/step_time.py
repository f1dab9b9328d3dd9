"""A rough step time of one RL step: rollout, old-logprob pass, training, weight sync.

Everything here is an ESTIMATE from peak numbers and assumed efficiencies (``Efficiency``),
for comparing layouts and sizing clusters, not a prediction to report. The phases run one
after another (on-policy, synchronous; no overlap of rollout and training is modelled).
- Rollout prefill: compute bound, 2 * FLOPs of a forward per prompt token; the radix cache
  shares a prompt among its samples, so each prompt is prefilled once per generation round.
- Rollout decode: each decode step of an engine reads its weight shard and the KV cache of
  the running sequences from HBM (memory bound; compute bound if that is slower). Running
  sequences = what the KV cache holds at full length (prompt + mean response), at most the
  engine's share; the engine's sequences run in ceil(share / running) waves of
  ``mean_response_tokens`` steps, at the mean context (prompt + response / 2). Mean lengths
  hide the long tail: ``max_response_tokens`` adds a floor (that many steps of an engine
  reading only its weights), but real rollouts are slower still.
- Old-logprob pass and training: FLOPs of ``flops.py`` (3 forwards for training, plus what
  recomputation runs again) over all training GPUs at ``Efficiency.mfu`` of peak, stretched by
  the 1F1B pipeline bubble (1 + (p - 1) / m), m = micro-batches per pipeline per mini-batch
  (the bubble fraction of Narayanan et al. 2021). The tokens, sum(len**2) of attention and m
  are ``batch_cost.py``'s, over the workload's lengths (``response_lengths``): packed at the
  layout's ``max_tokens_per_microbatch``, else rows padded to the longest sample.
  ``compare_packing`` gives both, for the same samples.
- Weight sync: the engine-format model (bf16 or fp8) at ``Efficiency.link_efficiency`` of the
  link: InfiniBand per GPU (disaggregated: the trainer's rank 0 broadcasts) or NVLink
  (colocated, CUDA IPC on the node: no network hop).
- Colocated with release (``colocation.py``): rollout runs on every training GPU (one engine
  per ``engine_tensor_parallel`` of them), and each step adds the trainer's offload + reload
  (``trainer_offload``'s state over PCIe, twice, at ``Efficiency.link_efficiency`` of
  ``Cluster.host_gbps``) and the engines' release + resume calls (``ENGINE_RELEASE_RESUME_S``).
"""

import dataclasses
import math
from dataclasses import dataclass, field

from megatron_fork.planning.activations import qwen3_block
from megatron_fork.planning.batch_cost import mini_batch_cost, response_lengths
from megatron_fork.planning.colocation import ENGINE_RELEASE_RESUME_S, host_transfer_seconds
from megatron_fork.planning.flops import forward_flops, packed_forward_flops, training_flops
from megatron_fork.planning.layout import Cluster, RolloutPlacement, TrainingLayout
from megatron_fork.planning.memory import engine_weight_bytes, plan_memory
from megatron_fork.planning.sizes import ModelSize


@dataclass(frozen=True)
class Workload:
    """What one RL step does (the paper: 512 prompts x 16 samples, 16 mini-batches)."""

    prompts_per_step: int
    """Prompts kept for training per step."""
    samples_per_prompt: int
    """Responses per prompt (GRPO group size)."""
    prompt_tokens: int
    """Mean prompt length, tokens."""
    mean_response_tokens: int
    """Mean response length, tokens."""
    mini_batches_per_step: int
    """Optimizer steps per RL step."""
    generation_rounds: float = 1.0
    """Generated / kept prompts (dynamic sampling over-generates, e.g. 1536 / 512 = 3 at most)."""
    max_response_tokens: int = 0
    """Longest response (e.g. 20480): decode lasts at least this many steps of a small batch
    (the tail), and training's response lengths spread up to it (``mini_batch_lengths``); 0
    leaves the tail out (every response at the mean)."""

    def __post_init__(self):
        counts = ("prompts_per_step", "samples_per_prompt", "prompt_tokens")
        for name in counts + ("mean_response_tokens", "mini_batches_per_step"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Workload.{name} must be a positive int, got {value!r}")
        if self.generation_rounds < 1.0:
            raise ValueError("Workload.generation_rounds must be >= 1.0 (generated / kept)")
        if 0 < self.max_response_tokens < self.mean_response_tokens:
            raise ValueError("Workload.max_response_tokens must be >= mean_response_tokens")

    @property
    def sequences(self) -> int:
        return self.prompts_per_step * self.samples_per_prompt

    @property
    def sequence_tokens(self) -> int:
        return self.prompt_tokens + self.mean_response_tokens

    def mini_batch_lengths(self) -> list[int]:
        """Positions (prompt + response - 1) of one mini-batch's samples: mean prompts and
        ``batch_cost.response_lengths`` (the mean alone when ``max_response_tokens`` is 0)."""
        count = self.sequences // self.mini_batches_per_step
        longest = self.max_response_tokens or self.mean_response_tokens
        responses = response_lengths(self.mean_response_tokens, longest, count)
        return [self.prompt_tokens + r - 1 for r in responses]


@dataclass(frozen=True)
class Efficiency:
    """Assumed fractions of peak: the knobs of the estimate, not measurements."""

    mfu: float = 0.35
    """Achieved / peak BF16 FLOP/s for training, the old-logprob pass and prefill, counting the
    FLOPs actually run (recomputation included). Megatron runs of dense 8-32B models at long
    context typically report 30-45%."""
    hbm_efficiency: float = 0.7
    """Achieved / peak HBM bandwidth in decode steps."""
    link_efficiency: float = 0.7
    """Achieved / nominal bandwidth of a weight-sync transfer."""
    fp8_speedup: float = 1.3
    """End-to-end training speed-up of FP8 GEMMs over BF16 (below the GEMMs' 2x)."""


@dataclass(frozen=True)
class StepTimeEstimate:
    """Seconds per phase of one RL step (an estimate)."""

    phases: dict[str, float]
    """Phase name -> seconds."""
    details: dict[str, float]
    """Numbers behind the phases (decode batch, waves, FLOPs...)."""
    notes: tuple[str, ...] = field(default=())
    """Assumptions."""

    @property
    def total(self) -> float:
        return sum(self.phases.values())

    def table(self) -> str:
        lines = ["ESTIMATE (peak numbers x assumed efficiencies, not a measurement): step time"]
        lines += [f"  {name:<34}{sec:10.1f} s" for name, sec in self.phases.items()]
        lines.append(f"  {'total':<34}{self.total:10.1f} s  ({self.total / 60:.1f} min)")
        lines += [f"  {name:<34}{value:14,.1f}" for name, value in self.details.items()]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "phases": dict(self.phases),
            "total": self.total,
            "details": dict(self.details),
            "notes": list(self.notes),
        }


def _forward(model: ModelSize, seq: int):
    return forward_flops(qwen3_block(model), model.num_layers, model.vocab_size, seq)


def _decode(model, rollout, cluster, workload, eff, kv_tokens) -> dict[str, float]:
    tp = rollout.engine_tensor_parallel
    share = math.ceil(workload.sequences * workload.generation_rounds / rollout.engines)
    running = max(1, min(share, kv_tokens // workload.sequence_tokens))
    waves = math.ceil(share / running)
    context = workload.prompt_tokens + workload.mean_response_tokens / 2
    weights = engine_weight_bytes(model, rollout.fp8_weights) / tp
    kv = running * context * model.kv_cache_bytes_per_token(2, tp)
    memory_s = (weights + kv) / (cluster.hbm_tbps * 1e12 * eff.hbm_efficiency)
    attention = 4 * model.q_size * context * model.num_layers  # q.k and p.v over the context
    flops = running * (_forward(model, 1).total + attention) / tp
    compute_s = flops / (cluster.peak_bf16_tflops * 1e12 * eff.mfu)
    step_s = max(memory_s, compute_s)
    tail_step_s = weights / (cluster.hbm_tbps * 1e12 * eff.hbm_efficiency)
    seconds = waves * workload.mean_response_tokens * step_s
    return {
        "decode batch per engine": running,
        "decode waves": waves,
        "decode step (ms)": step_s * 1e3,
        "decode seconds": max(seconds, workload.max_response_tokens * tail_step_s),
    }


def _prefill_seconds(model, rollout, cluster, workload, eff) -> float:
    prompts = math.ceil(workload.prompts_per_step * workload.generation_rounds / rollout.engines)
    fwd = _forward(model, workload.prompt_tokens)
    gpu_flops = rollout.engine_tensor_parallel * cluster.peak_bf16_tflops * 1e12 * eff.mfu
    return prompts * fwd.total / gpu_flops


def _bubble(layout: TrainingLayout, micro_batches: int) -> float:
    return 1 + (layout.pipeline_parallel - 1) / max(1, micro_batches)


def _training_phases(model, layout, workload, cluster, eff) -> tuple[dict, dict]:
    """Old-logprob pass and training seconds (both one schedule of m micro-batches per
    mini-batch, as the trainer runs them), plus the mini-batch's cost figures."""
    cost = mini_batch_cost(layout, workload.mini_batch_lengths())
    fwd = packed_forward_flops(
        qwen3_block(model),
        model.num_layers,
        model.vocab_size,
        cost.computed_tokens,
        cost.attention_pairs,
    )
    speed = layout.world_size * cluster.peak_bf16_tflops * 1e12 * eff.mfu
    speed *= eff.fp8_speedup if layout.fp8 else 1.0
    mini, m = workload.mini_batches_per_step, cost.micro_batches
    train = mini * training_flops(fwd, layout.recompute, layout.recompute_modules)
    phases = {
        "old-logprob forward": mini * fwd.total / speed * _bubble(layout, m),
        "training (fwd + bwd + optimizer)": train / speed * _bubble(layout, m),
    }
    details = {
        "train micro-batches per DP rank": m,
        "real tokens computed (%)": 100 * cost.real_token_fraction,
    }
    return phases, details


def compare_packing(
    model: ModelSize,
    layout: TrainingLayout,
    cluster: Cluster,
    workload: Workload,
    efficiency: Efficiency = Efficiency(),
) -> dict[str, float]:
    """Training seconds per RL step of the same samples packed and padded (an estimate). The
    packed side uses the layout's budget, or, for a padded layout, its micro-batch's tokens
    (``micro_batch_size`` x ``sequence_length``: the same activation memory)."""
    budget = layout.micro_batch_tokens
    packed = dataclasses.replace(layout, max_tokens_per_microbatch=budget)
    padded = dataclasses.replace(layout, max_tokens_per_microbatch=None)
    out = {}
    for name, variant in (("packed", packed), ("padded", padded)):
        phases, details = _training_phases(model, variant, workload, cluster, efficiency)
        out[f"{name}: training (s)"] = phases["training (fwd + bwd + optimizer)"]
        out[f"{name}: old-logprob forward (s)"] = phases["old-logprob forward"]
        out[f"{name}: real tokens computed (%)"] = details["real tokens computed (%)"]
        out[f"{name}: micro-batches per DP rank"] = details["train micro-batches per DP rank"]
    out["packed / padded training"] = out["packed: training (s)"] / out["padded: training (s)"]
    return out


def estimate_step_time(
    model: ModelSize,
    layout: TrainingLayout,
    rollout: RolloutPlacement,
    cluster: Cluster,
    workload: Workload,
    efficiency: Efficiency = Efficiency(),
) -> StepTimeEstimate:
    """Seconds per RL step, phase by phase (an estimate; see the module docstring)."""
    plan = plan_memory(model, layout, rollout, cluster)
    decode = _decode(model, rollout, cluster, workload, efficiency, plan.engine.kv_tokens)
    link = cluster.intra_node_gbps if rollout.colocated else cluster.inter_node_gbps
    sync_bytes = engine_weight_bytes(model, rollout.fp8_weights)
    training, counts = _training_phases(model, layout, workload, cluster, efficiency)
    phases = {
        "rollout prefill": _prefill_seconds(model, rollout, cluster, workload, efficiency),
        "rollout decode": decode.pop("decode seconds"),
        **training,
        "weight sync": sync_bytes / (link * 1e9 * efficiency.link_efficiency),
    }
    if rollout.colocated and rollout.release_between_phases:
        phases["trainer offload + reload (host)"] = host_transfer_seconds(
            plan.breakdown, rollout.trainer_offload, cluster, efficiency.link_efficiency
        )
        phases["engine release + resume"] = ENGINE_RELEASE_RESUME_S
    notes = (
        f"mfu={efficiency.mfu}, hbm_efficiency={efficiency.hbm_efficiency}, "
        f"link_efficiency={efficiency.link_efficiency} (assumed)",
        "mean lengths: the longest responses of a wave make real rollouts slower",
        "phases run one after another (synchronous, on-policy)",
        "training "
        + (
            f"packed, max_tokens_per_microbatch={layout.max_tokens_per_microbatch}"
            if layout.packing
            else f"padded: rows of the longest sample, micro_batch_size={layout.micro_batch_size}"
        )
        + "; response lengths: exponential clipped at the longest, at the mean given",
    )
    return StepTimeEstimate(phases, decode | counts, notes)
