"""Collectives that are no-ops for ``group=None`` (this process only) or a group of one."""

import torch
import torch.distributed as dist


def group_size(group) -> int:
    """Number of ranks in ``group``; 1 for ``None`` (this process only)."""
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group) -> int:
    """This process's rank in ``group``; 0 for ``None``."""
    return 0 if group is None else dist.get_rank(group)


def all_reduce_(tensor: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce over ``group``; returns ``tensor`` for chaining."""
    if group_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def all_gather_counts(count: int, group, device) -> torch.Tensor:
    """[group size] int64: ``count`` from every rank of ``group``, in rank order."""
    mine = torch.tensor([count], dtype=torch.int64, device=device)
    size = group_size(group)
    if size == 1:
        return mine
    gathered = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(gathered, mine, group=group)
    return torch.cat(gathered)
