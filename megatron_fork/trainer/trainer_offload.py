"""The trainer's own GPU memory around a colocated rollout (``rollout.trainer_offload``), as the
planner assumes it (``planning/colocation.py``: ``KEPT_DURING_SYNC``, ``KEPT_DURING_ROLLOUT``):

- before the weight sync ("all", "optimizer"): gradient buffers freed
  (``DistributedDataParallel.offload_grad_buffers``, ``distributed/distributed_data_parallel.py:
  575-594``: storage resized to 0; ``restore_grad_buffers`` :596-611 zeroes them back) and the
  optimizer's fp32 main params and Adam states moved to host (``MegatronOptimizer.offload_to_cpu``
  / ``restore_from_cpu``, ``optimizer/optimizer.py:344-381``; ``ChainedOptimizer`` :1414-1421);
- after the sync, while the engines generate ("all"): the bf16 weights to host, the contiguous
  param buffer by ``_ParamAndGradBuffer.offload_to_cpu(move_params=True)`` /
  ``reload_from_cpu`` (``distributed/param_and_grad_buffer.py:964-992``: pinned host copy,
  storage resized to 0), which exists only with the distributed optimizer (``None`` at :751,
  allocated at :796-801); without it each parameter's storage is moved the same way here;
- the KL term's frozen reference model (``loss.kl_coef > 0``) moves with the optimizer state
  ("all", "optimizer"; each parameter's storage): unused until the next training, it does not
  share the GPU with the engines ("none" keeps it). The planner counts no reference model in
  any phase, training included (the recipes run without KL, as DAPO and the paper do);
- after the engines released their memory: everything back before training.

Only on a GPU: on the CPU backend there is no device memory to hand over, so every call is a
no-op that is counted (``counts``, logged as ``colocated/*``), which is what the CPU tests see.
"""

import torch

from megatron_fork.planning.layout import TRAINER_OFFLOAD


def holds_model_weights(optimizer) -> bool:
    """Whether an optimizer's param groups are the model's own parameters (Megatron-Core 0.16.1
    ``FP32Optimizer``, built without bf16/fp16 and without the distributed optimizer,
    ``optimizer/__init__.py:463-465``), so its ``offload_to_cpu`` (``optimizer.py:344-357``,
    ``p.data = p.data.cpu()`` per param group) would move the weights themselves."""
    parts = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    return any(type(part).__name__ == "FP32Optimizer" for part in parts)


class TrainerOffload:
    def __init__(self, model, optimizer, policy: str, on_gpu: bool | None = None, frozen=None):
        """``model``: the DDP-wrapped model (or a list of chunks); ``policy``: "all",
        "optimizer" or "none" (``RolloutConfig.trainer_offload``); ``frozen``: the KL
        reference model (or None), parked with the optimizer state."""
        if policy not in TRAINER_OFFLOAD:
            raise ValueError(f"trainer_offload must be one of {TRAINER_OFFLOAD}, got {policy!r}")
        self.chunks = model if isinstance(model, list) else [model]
        self.optimizer, self.policy = optimizer, policy
        self.frozen = [] if frozen is None else list(frozen.parameters())
        self.on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
        if self.on_gpu and policy != "none" and holds_model_weights(optimizer):
            raise ValueError(
                f"rollout.trainer_offload={policy!r} with fp32 params and no distributed "
                "optimizer: Megatron's FP32Optimizer steps the model's own weights, so its "
                "offload_to_cpu would move them to host before the weight sync; use "
                "precision.params=bf16 or parallel.distributed_optimizer=True (the recipes "
                "do), or rollout.trainer_offload=none"
            )
        self.counts = {"offload_for_sync": 0, "offload_for_rollout": 0, "restore": 0}
        self._moved: set[str] = set()  # "state" (grads + optimizer), "weights"
        self._host_params: list = []  # (storage, size, host copy) without a param buffer

    def offload_for_sync(self) -> None:
        """Gradients freed, optimizer state and the frozen model to host ("all",
        "optimizer")."""
        if self.policy == "none" or "state" in self._moved:
            return
        self.counts["offload_for_sync"] += 1
        self._moved.add("state")
        if self.on_gpu:
            for chunk in self.chunks:
                chunk.offload_grad_buffers()
            self.optimizer.offload_to_cpu()
            self._park(self.frozen)
            torch.cuda.empty_cache()

    def offload_for_rollout(self) -> None:
        """The weights to host as well ("all"), after they were sent to the engines."""
        self.offload_for_sync()
        if self.policy != "all" or "weights" in self._moved:
            return
        self.counts["offload_for_rollout"] += 1
        self._moved.add("weights")
        if self.on_gpu:
            self._offload_weights()
            torch.cuda.empty_cache()

    def restore(self) -> None:
        """Everything back on the GPU, before training (or a checkpoint)."""
        if not self._moved:
            return
        self.counts["restore"] += 1
        if self.on_gpu:
            self._reload_weights()
            self.optimizer.restore_from_cpu()
            for chunk in self.chunks:
                chunk.restore_grad_buffers()
        self._moved.clear()

    def metrics(self) -> dict:
        """Counts so far, and whether anything really moved (0.0 on the CPU backend)."""
        found = {f"colocated/trainer_{name}": float(n) for name, n in self.counts.items()}
        return {**found, "colocated/trainer_offload_on_gpu": float(self.on_gpu)}

    def _buffers(self):
        for chunk in self.chunks:
            yield from chunk.buffers + chunk.expert_parallel_buffers

    def _offload_weights(self) -> None:
        for buffer in self._buffers():
            if buffer.param_data is not None:
                buffer.offload_to_cpu(move_params=True, move_grads=False)
            else:  # plain DDP: no contiguous param buffer, each parameter's own storage
                self._park(buffer.params)

    def _park(self, params) -> None:
        """Each parameter's storage to a pinned host copy, freed on the GPU."""
        for param in params:
            storage = param.untyped_storage()
            if storage.nbytes() == 0:
                continue
            host = param.detach().cpu().pin_memory()
            self._host_params.append((param, storage.nbytes(), host))
            storage.resize_(0)

    def _reload_weights(self) -> None:
        """The param buffers (if moved), then every parked parameter."""
        if "weights" in self._moved:
            for buffer in self._buffers():
                if buffer.param_data is not None:
                    buffer.reload_from_cpu(move_params=True, move_grads=False)
        for param, nbytes, host in self._host_params:
            param.untyped_storage().resize_(nbytes)
            param.data.copy_(host, non_blocking=True)
        self._host_params = []
