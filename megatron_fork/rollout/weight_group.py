"""The process group that carries weights from the trainer to rollout engines, apart from the
trainer's own: the trainer is rank 0 and hosts the rendezvous store, engine TP rank r of an
engine joins at ``rank_offset + r`` (sglang's ``/init_weights_update_group``). Gloo on CPU,
NCCL on GPUs. A bucket travels as one broadcast from rank 0 per tensor, in the order of its
names (sglang's default ``load_format``)."""

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed import PrefixStore, TCPStore

from megatron_fork.rollout.flattened_bucket import unflatten_bucket

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float8_e4m3fn": torch.float8_e4m3fn,
}
_BYTE_WIRE = (torch.float8_e4m3fn,)
"""Sent as their bytes (collectives need not know FP8)."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class WeightGroup:
    """A joined group (the store is kept: rank 0's hosts the rendezvous)."""

    store: TCPStore
    group: dist.ProcessGroup
    rank: int

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0 sends ``tensors``, every other rank receives into its own, in order."""
        options = dist.BroadcastOptions()
        options.rootRank = 0
        for tensor in tensors:
            wire = tensor.view(torch.uint8) if tensor.dtype in _BYTE_WIRE else tensor
            self.group.broadcast([wire], options).wait()


def join_weight_group(
    master_address: str,
    master_port: int,
    rank: int,
    world_size: int,
    group_name: str,
    backend: str = "gloo",
    timeout: timedelta = timedelta(minutes=5),
) -> WeightGroup:
    """Blocks until all ``world_size`` members have joined (rank 0 first opens the store)."""
    store = TCPStore(master_address, master_port, world_size, rank == 0, timeout=timeout)
    prefixed = PrefixStore(group_name, store)
    if backend == "gloo":
        group = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
    elif backend == "nccl":
        group = dist.ProcessGroupNCCL(prefixed, rank, world_size)
    else:
        raise ValueError(f"weight-update backend {backend!r}: use 'gloo' (CPU) or 'nccl'")
    return WeightGroup(store, group, rank)


def receive_tensors(
    group: WeightGroup, names, dtypes, shapes, flattened: bool = False, device: str = "cpu"
) -> list[tuple[str, torch.Tensor]]:
    """The receiving side of one bucket: fresh tensors of the announced dtypes and shapes, sent
    one broadcast each or (``flattened``) as one uint8 buffer."""
    unknown = sorted({d for d in dtypes if d not in DTYPES})
    if unknown:
        raise ValueError(f"unsupported dtypes {unknown}: expected one of {sorted(DTYPES)}")
    if flattened:
        torch_dtypes = [DTYPES[d] for d in dtypes]
        sizes = [torch.Size(s).numel() * torch.empty((), dtype=d).element_size()
                 for s, d in zip(shapes, torch_dtypes, strict=True)]  # fmt: skip
        buffer = torch.empty(sum(sizes), dtype=torch.uint8, device=device)
        group.broadcast([buffer])
        return unflatten_bucket(buffer, names, torch_dtypes, shapes)
    tensors = [
        torch.empty(tuple(shape), dtype=DTYPES[dtype], device=device)
        for dtype, shape in zip(dtypes, shapes, strict=True)
    ]
    group.broadcast(tensors)
    return list(zip(names, tensors, strict=True))
