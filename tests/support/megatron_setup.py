"""The few lines every multi-rank Megatron test starts with: the CPU backend, parallel state,
seeds, and Megatron DDP with grad finalisation (call inside a rank's worker)."""

import torch


def init_megatron(tp: int = 1, pp: int = 1, cp: int = 1, seed: int | None = None) -> None:
    """CPU backend + ``initialize_model_parallel``; with ``seed``, the default generator (CPU
    initialisation draws from it) and Megatron's model-parallel RNG streams."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_fork.backends.cpu import enable_cpu_backend

    enable_cpu_backend()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, context_parallel_size=cp
    )
    if seed is not None:
        torch.manual_seed(seed)
        model_parallel_cuda_manual_seed(seed)


def wrap_ddp(model):
    """Megatron DDP around ``model``, with ``finalize_model_grads`` run by the schedule."""
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )

    model.config.finalize_model_grads_func = finalize_model_grads
    return DistributedDataParallel(model.config, DistributedDataParallelConfig(), model)


def gather_vocab(logits: torch.Tensor, tp_group) -> torch.Tensor:
    """[..., V/TP] vocab-parallel logits -> [..., V] on every TP rank."""
    import torch.distributed as dist

    shards = [torch.empty_like(logits) for _ in range(dist.get_world_size(tp_group))]
    dist.all_gather(shards, logits.contiguous(), group=tp_group)
    return torch.cat(shards, dim=-1)
