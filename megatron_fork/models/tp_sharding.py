"""Cut a full tensor into a tensor-parallel rank's shard, and gather the shards back, from the
parameter's own partition attributes (``tensor_model_parallel``, ``partition_dim``,
``partition_stride``). A stride of 2 is SwiGLU's fused gate/up: rank r holds its slice of the
gate followed by its slice of the up projection."""

import torch
import torch.distributed as dist

from megatron_fork.parallel.groups import group_size


def _partition(param: torch.nn.Parameter) -> tuple[int, int] | None:
    """(dim, stride) of a TP-split parameter, None for a replicated one."""
    if not getattr(param, "tensor_model_parallel", False):
        return None
    return param.partition_dim, getattr(param, "partition_stride", 1)


def shard_for_rank(full: torch.Tensor, param, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This TP rank's part of ``full``, split the way ``param`` is partitioned."""
    partition = _partition(param)
    if partition is None or tp_size == 1:
        return full
    dim, stride = partition
    pieces = torch.split(full, full.shape[dim] // (tp_size * stride), dim=dim)
    return torch.cat(pieces[tp_rank::tp_size], dim=dim)


def gather_full(param: torch.nn.Parameter, tp_group) -> torch.Tensor:
    """The whole tensor of a (possibly TP-split) parameter: an all-gather over ``tp_group``."""
    local = param.detach()
    partition, tp_size = _partition(param), group_size(tp_group)
    if partition is None or tp_size == 1:
        return local
    dim, stride = partition
    shards = [torch.empty_like(local) for _ in range(tp_size)]
    dist.all_gather(shards, local.contiguous(), group=tp_group)
    # Rank r holds pieces r, r + tp, ...: interleave them back in order.
    per_rank = [torch.chunk(shard, stride, dim=dim) for shard in shards]
    return torch.cat([per_rank[r][s] for s in range(stride) for r in range(tp_size)], dim=dim)
