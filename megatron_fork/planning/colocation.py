"""Engines and trainer on the same GPUs (``RolloutPlacement.colocated``): what each phase of a
step holds on a GPU, and what handing the memory back and forth costs.

A colocated step, with release (``release_between_phases``), runs in this order (NeMo-RL's:
``offload_before_refit`` -> weights to the engines -> ``offload_after_refit`` -> KV cache
resumed, ``nemo_rl/algorithms/grpo.py:2342-2417``; verl's ``rollout_mode``, slime's
``train.py:23-33`` resume weights, sync, then resume the KV cache):

1. training: the trainer holds all of its state and activations; each engine is released and
   holds only its residue (``RELEASED_ENGINE_GIB``).
2. weight sync: the trainer frees its gradient buffers and moves its optimizer state to host
   (``trainer_offload`` "all"/"optimizer"), the engines resume their weights (not the KV
   cache), and the trainer's bf16 weights go to them bucket by bucket over CUDA IPC.
3. rollout: the trainer moves what ``trainer_offload`` says to host, the engines resume the KV
   cache and generate on every GPU; then they release everything and the trainer reloads.

What the trainer keeps while the engines generate (``KEPT_DURING_ROLLOUT``): the default, "all",
keeps nothing but its process's residue, as slime (``--colocate`` implies ``--offload-train``,
``slime/utils/arguments.py:71-100``; ``torch_memory_saver.pause()`` of the whole actor,
``slime/backends/megatron_utils/actor.py:206-221``), verl (``offload_megatron_model_to_cpu``:
bf16 params to pinned host, grad buffers freed, ``verl/utils/megatron_utils.py:411-444``;
optimizer offload ``:556``) and NeMo-RL (``offload_after_refit``: "Offload as much as possible
on the CPU", ``megatron_policy_worker.py:3172-3190``) do. Megatron-Core 0.16.1 has the pieces:
``DistributedDataParallel.offload_grad_buffers`` / ``restore_grad_buffers``
(``distributed/distributed_data_parallel.py:575,596``: storage resized to 0, zeroed on restore),
``_ParamAndGradBuffer.offload_to_cpu(move_params=True)`` (``param_and_grad_buffer.py:964``:
bf16 params to pinned host) and ``MegatronOptimizer.offload_to_cpu`` / ``restore_from_cpu``
(``optimizer/optimizer.py:344,364``: "Function used for RL training", fp32 main params and Adam
states to host). The optimizer's own CPU offload (``OptimizerConfig.optimizer_cpu_offload``,
``optimizer_config.py:304``) runs Adam on the CPU every step instead: not used here.
"optimizer" keeps the bf16 weights (a smaller KV cache, no weight copy over PCIe); "none" keeps
everything (only small models fit).

Released engines keep per-GPU residues, fixed here (an ESTIMATE; the bring-up kit measures them):
- sglang 0.5.15 ``release_memory_occupation`` with all tags (``weights``, ``kv_cache``,
  ``cuda_graph``: ``srt/constants.py:2-4``) pauses torch_memory_saver's regions
  (``managers/scheduler_components/weight_updater.py:184-225``); without
  ``--enable-weights-cpu-backup`` the weights are dropped, not copied (the trainer's sync
  rewrites them). Left: the CUDA context, the TP group's NCCL communicators and torch
  allocations outside the saver's regions.
- vLLM 0.34.0 sleep: level 1 offloads weights to host and discards the KV cache, level 2 also
  discards the weights (``entrypoints/llm.py:849-872``); the cuMem backend suspends the
  ``weights``, ``runtime`` and ``cudagraph`` tags (``device_allocator/sleep_mode_backend.py:
  126-131``), "with NCCL buffers left untouched" (its docstring). Left: CUDA context, NCCL
  buffers. Level 2 is the one for RL (the weights are synced after waking). Reported residues:
  4.75 GiB after a level-2 sleep (vllm-project/vllm#17117, graphs not yet offloaded then),
  7.0 GB per GPU for TP8 over two nodes with 1.5 GB of graphs (vllm-project/vllm#47654).
A released trainer keeps its CUDA context and its NCCL communicators (TP/CP/DP/PP and the
weight-sync group; slime destroys its groups to free them, ``actor.py:216``).
"""

from megatron_fork.planning.layout import TRAINER_OFFLOAD, Cluster, RolloutPlacement

GIB = 2**30
WEIGHTS = "weights (bf16)"
GRADIENTS = "gradients (fp32 main grads)"
OPTIMIZER = "optimizer (fp32 master, Adam m, v)"
FP8_COPIES = "fp8 weight copies (TE, + transpose)"
"""The trainer's state in ``memory.training_breakdown`` (everything else is activations)."""
TRAINER_STATE = (WEIGHTS, GRADIENTS, OPTIMIZER, FP8_COPIES)

KEPT_DURING_ROLLOUT = {"all": (), "optimizer": (WEIGHTS,), "none": TRAINER_STATE}
"""Trainer state left on the GPU while the engines generate, by ``trainer_offload``. Gradient
buffers are freed (not copied: zeroed every step anyway) and FP8 weight copies dropped (TE makes
them again from the bf16 weights at the next forward)."""
KEPT_DURING_SYNC = {"all": (WEIGHTS,), "optimizer": (WEIGHTS,), "none": TRAINER_STATE}
"""Trainer state on the GPU while it sends its weights (they must be there to be sent)."""
MOVED_TO_HOST = {"all": (WEIGHTS, OPTIMIZER), "optimizer": (OPTIMIZER,), "none": ()}
"""State copied to host memory and back once per step."""

RELEASED_ENGINE_GIB = {"sglang": 3.0, "vllm": 3.0}
"""Per-GPU bytes (GiB) a released engine keeps: CUDA context (~0.5), its NCCL communicators
(~1, more with NVLink SHARP buffers), allocations outside the released pools (~1)."""
RELEASED_TRAINER_GIB = 3.0
"""Per-GPU bytes (GiB) an offloaded trainer keeps: CUDA context, the NCCL communicators of its
groups, the caching allocator's remainder after ``empty_cache``."""
WEIGHT_SYNC_BUCKET_BYTES = 512 * 2**20
"""One bucket of HF-named tensors in flight (``RolloutConfig.weight_bucket_bytes``' default)."""
ENGINE_RELEASE_RESUME_S = 1.0
"""Seconds per step for the engines' release + resume calls (virtual memory unmapped and mapped
again, nothing copied): vLLM measured 0.08 s to sleep and 0.47 s to wake at level 2 for
Qwen3-32B TP1 (vllm-project/vllm#45648); rounded up for two resume calls (weights, KV cache)."""


def _kept(training: dict[str, int], names: tuple[str, ...], who: str) -> dict[str, int]:
    return {f"{who} {name}": training[name] for name in names if name in training}


def phase_breakdowns(
    training: dict[str, int], engine_breakdown: dict[str, int], rollout: RolloutPlacement
) -> dict[str, dict[str, int]]:
    """Per-GPU bytes of each phase of a colocated step with release: "training", "weight sync",
    "rollout" (name -> bytes). ``training``: ``memory.training_breakdown`` of the GPU;
    ``engine_breakdown``: the engine's "engine weights" and "KV cache" on it."""
    engine_residue = int(RELEASED_ENGINE_GIB[rollout.engine_backend] * GIB)
    trainer_residue = int(RELEASED_TRAINER_GIB * GIB)
    offload = rollout.trainer_offload
    return {
        "training": {**training, "released engine (residue)": engine_residue},
        "weight sync": {
            **_kept(training, KEPT_DURING_SYNC[offload], "trainer"),
            "weight-sync bucket": WEIGHT_SYNC_BUCKET_BYTES,
            "engine weights (resumed)": engine_breakdown["engine weights"],
            "engine (residue)": engine_residue,
        },
        "rollout": {
            **_kept(training, KEPT_DURING_ROLLOUT[offload], "trainer"),
            "offloaded trainer (residue)": trainer_residue,
            **engine_breakdown,
        },
    }


def host_transfer_seconds(
    training: dict[str, int], offload: str, cluster: Cluster, link_efficiency: float
) -> float:
    """Seconds per step the trainer's offload and reload take: ``MOVED_TO_HOST`` crosses PCIe
    twice (to host after the sync, back before training). Every GPU moves its own share at the
    same time over its own link (8 x 64 GB/s stays below two sockets' DDR5 bandwidth)."""
    if offload not in TRAINER_OFFLOAD:
        raise ValueError(f"trainer_offload must be one of {TRAINER_OFFLOAD}, got {offload!r}")
    moved = sum(training.get(name, 0) for name in MOVED_TO_HOST[offload])
    return 2 * moved / (cluster.host_gbps * 1e9 * link_efficiency)
