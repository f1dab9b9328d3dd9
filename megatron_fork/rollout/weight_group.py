"""A process group that carries weights from one trainer process to rollout engines, apart from
the trainer's own: the sending process (a pipeline stage's leader; one group per stage) is
rank 0 and hosts the rendezvous store, engine TP rank r of an engine joins at
``rank_offset + r`` (sglang's ``/init_weights_update_group``). Gloo on CPU, NCCL on GPUs (the
tensors then live on the sender's GPU). A bucket travels as one broadcast from rank 0 per
tensor, in the order of its names (sglang's default ``load_format``), or as one uint8 buffer
(``flattened_bucket``).

Both sides build the group the way sglang's ``init_custom_process_group`` does (a TCP store,
``PrefixStore(group_name)``, then torch's process-group helper with ``group_name``), so the
store keys of the trainer and of a real sglang engine meet; the CPU server uses the same code.

On a GPU a broadcast that a server never joins (it died, or refused the update) would hang the
sender: a blocking NCCL broadcast makes the rank's own stream wait for it, so every later
kernel of that rank (its TP all-gathers, the trainer's own collectives) would queue behind it,
and leaving the group (``destroy_process_group`` finalises the communicator with its peers)
would wait too. So GPU broadcasts run on a side stream of the group, asynchronously, and are
waited for on the host against a deadline shorter than the group's timeout (before NCCL's
watchdog would tear the process down); a group that failed is aborted (no peers needed), one
that served well is destroyed while the servers destroy theirs (``stage_sender``).
"""

import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed import PrefixStore, TCPStore
from torch.distributed.distributed_c10d import _new_process_group_helper, _world

from megatron_fork.rollout.flattened_bucket import nbytes_of, unflatten_bucket

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float8_e4m3fn": torch.float8_e4m3fn,
}
_BYTE_WIRE = (torch.float8_e4m3fn,)
"""Sent as their bytes (collectives need not know FP8)."""
DEFAULT_TIMEOUT = timedelta(minutes=5)
DEADLINE_SHARE = 0.8
"""A GPU broadcast is given up after this share of the group's timeout (NCCL's watchdog acts at
the whole of it)."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class WeightGroup:
    """A joined group (the store is kept: rank 0's hosts the rendezvous)."""

    store: TCPStore
    group: dist.ProcessGroup
    rank: int
    name: str
    timeout: timedelta = DEFAULT_TIMEOUT
    _streams: dict = field(default_factory=dict, repr=False)
    """CUDA side stream per device, for this group's broadcasts."""

    def destroy(self) -> None:
        """Leave the group (its name can be formed again, as sglang re-forms it). With NCCL this
        finalises the communicator together with its peers: only for a group that served well,
        while the servers destroy theirs; a broken group is ``abort``ed."""
        try:
            dist.destroy_process_group(self.group)
        except (RuntimeError, ValueError, KeyError):
            pass  # already gone, or broken by a dead member: nothing left to release

    def abort(self) -> None:
        """Leave a group that may be broken without waiting for any peer: NCCL's communicators
        are aborted (pending broadcasts end); other backends are destroyed as usual."""
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if abort is None or dist.get_backend(self.group) != "nccl":
            self.destroy()
            return
        try:
            abort(self.group)
        except (RuntimeError, ValueError, KeyError):
            pass  # already gone

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0 sends ``tensors``, every other rank receives into its own, in order."""
        wires = [t.view(torch.uint8) if t.dtype in _BYTE_WIRE else t for t in tensors]
        if wires and wires[0].is_cuda:
            self._broadcast_on_side_stream(wires)
            return
        for wire in wires:
            dist.broadcast(wire, src=0, group=self.group)

    def _broadcast_on_side_stream(self, wires: list[torch.Tensor]) -> None:
        """GPU: asynchronous broadcasts on the group's side stream (after the rank's stream has
        produced the tensors), waited for on the host; TimeoutError past the deadline, with the
        rank's own stream never made to wait. Runs under the tensors' device (callers broadcast
        from a helper thread, whose current device is not the rank's)."""
        device = wires[0].device
        with torch.cuda.device(device):
            stream = self._streams.setdefault(device, torch.cuda.Stream(device))
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                works = [dist.broadcast(w, src=0, group=self.group, async_op=True) for w in wires]
        deadline = time.monotonic() + DEADLINE_SHARE * self.timeout.total_seconds()
        while not all(work.is_completed() for work in works):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"weight-update group {self.name}: a broadcast did not complete in "
                    f"{DEADLINE_SHARE * self.timeout.total_seconds():.0f} s (a server never "
                    "joined it); the group is abandoned"
                )
            time.sleep(0.005)
        for work in works:
            work.wait()  # raises a failed broadcast's error; the tensors stay referenced till here


def master_store(address: str, world_size: int, timeout=DEFAULT_TIMEOUT) -> TCPStore:
    """Rank 0's store on a free port (``.port``), open before anyone joins."""
    return TCPStore(address, 0, world_size, True, timeout=timeout, wait_for_workers=False)


def join_weight_group(
    store: TCPStore,
    rank: int,
    world_size: int,
    group_name: str,
    backend: str = "gloo",
    timeout: timedelta = DEFAULT_TIMEOUT,
    store_prefix: str | None = None,
) -> WeightGroup:
    """Blocks until all ``world_size`` members have joined. Engines pass a client store:
    ``TCPStore(master_address, master_port, world_size, False, timeout=...)``. The members
    meet under ``store_prefix`` (default: the group's name, as sglang's groups; vLLM's
    weight-transfer group has no name, so each side names its group locally)."""
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"weight-update backend {backend!r}: use 'gloo' (CPU) or 'nccl'")
    group, _ = _new_process_group_helper(
        world_size, rank, [], backend, PrefixStore(store_prefix or group_name, store),
        group_name=group_name, timeout=timeout,
    )  # fmt: skip
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return WeightGroup(store, group, rank, group_name, timeout)


def receive_tensors(
    group: WeightGroup, names, dtypes, shapes, flattened: bool = False, device: str = "cpu"
) -> list[tuple[str, torch.Tensor]]:
    """The receiving side of one bucket: fresh tensors of the announced dtypes and shapes, sent
    one broadcast each or (``flattened``) as one uint8 buffer."""
    unknown = sorted({d for d in dtypes if d not in DTYPES})
    if unknown:
        raise ValueError(f"unsupported dtypes {unknown}: expected one of {sorted(DTYPES)}")
    torch_dtypes = [DTYPES[d] for d in dtypes]
    if flattened:
        total = sum(nbytes_of(s, d) for s, d in zip(shapes, torch_dtypes, strict=True))
        buffer = torch.empty(total, dtype=torch.uint8, device=device)
        group.broadcast([buffer])
        return unflatten_bucket(buffer, names, torch_dtypes, shapes)
    tensors = [
        torch.empty(tuple(shape), dtype=dtype, device=device)
        for dtype, shape in zip(torch_dtypes, shapes, strict=True)
    ]
    group.broadcast(tensors)
    return list(zip(names, tensors, strict=True))
