"""The trainer's half of a vLLM weight-transfer group on GPUs, without vLLM in the trainer's
environment: vLLM's ``nccl_unique_id_b64`` rendezvous (``nccl_common.py``), where the trainer
mints an NCCL unique id, every engine worker enters ``ncclCommInitRank`` with it at its rank,
and each peer then takes part in one warm-up all-reduce of a float32 zero. torch's own NCCL
bindings (``torch.cuda.nccl``: ``unique_id``, ``init_rank``, ``all_reduce``, ``broadcast``)
are enough for rank 0 of such a communicator.

As ``weight_group.WeightGroup`` does for the sglang groups, broadcasts run on a side stream and
are waited for on the host against a deadline, so a worker that never joins a broadcast cannot
make the rank's own stream (its training kernels) wait. Everything runs on the rank's own GPU,
named by the caller (the join and the broadcasts run in helper threads, whose current device
is not the rank's). torch's bindings never free these communicators (its capsule destructor
returns before ``ncclCommDestroy``) and have no abort, so the group ends them itself through the
NCCL library the process loaded (``ncclCommAbort`` after a failure: queued broadcasts end;
``ncclCommDestroy`` after a healthy use): a multi-stage run forms one group per stage and sync.

Not run here (no GPU, no vLLM): checked against torch's ``torch/cuda/nccl.py`` and
``csrc/cuda/python_nccl.cpp`` (the capsule ``torch.cuda.nccl.Communicator``) and vLLM's
``pynccl.py`` (``from_unique_id_bytes``, ``_init_comm``); a ``gpu`` test is listed in the
README's "not verified" list.
"""

import ctypes
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch

from megatron_fork.rollout.weight_group import _BYTE_WIRE, DEADLINE_SHARE, DEFAULT_TIMEOUT

CAPSULE_NAME = b"torch.cuda.nccl.Communicator"
NCCL_LIBRARY_VARIABLES = ("VLLM_NCCL_SO_PATH", "SGLANG_NCCL_LIBRARY")
"""Where the container names the NCCL library the trainer's torch loaded (else libnccl.so.2)."""


def new_unique_id() -> bytes:
    """An NCCL unique id (128 bytes) minted on this host."""
    import torch.cuda.nccl as nccl

    return bytes(nccl.unique_id())


@dataclass
class UniqueIdGroup:
    comm: object
    name: str
    device: torch.device
    timeout: timedelta = DEFAULT_TIMEOUT
    _stream: object = field(default=None, repr=False)

    @classmethod
    def join(
        cls, unique_id: bytes, world_size: int, name: str, device: torch.device
    ) -> "UniqueIdGroup":
        """Rank 0 of the communicator on ``device`` (the rank's GPU): blocks until every worker
        has entered it, then the warm-up all-reduce every vLLM worker performs after its init."""
        import torch.cuda.nccl as nccl

        with torch.cuda.device(device):
            comm = nccl.init_rank(world_size, unique_id, 0)
            warm_up = torch.zeros(1, dtype=torch.float32, device=device)
            nccl.all_reduce([warm_up], comms=[comm])
            torch.cuda.current_stream(device).synchronize()
        return cls(comm, name, device)

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0 sends ``tensors`` in order (FP8 as its bytes), on the side stream of the
        group's device; waited for on the host, TimeoutError past the deadline."""
        import torch.cuda.nccl as nccl

        wires = [t.view(torch.uint8) if t.dtype in _BYTE_WIRE else t for t in tensors]
        if any(w.device != self.device for w in wires):
            raise ValueError(f"weight-transfer group {self.name} lives on {self.device}")
        with torch.cuda.device(self.device):
            if self._stream is None:
                self._stream = torch.cuda.Stream(self.device)
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            for wire in wires:
                nccl.broadcast([wire], root=0, streams=[self._stream], comms=[self.comm])
            done = torch.cuda.Event()
            done.record(self._stream)
        limit = DEADLINE_SHARE * self.timeout.total_seconds()
        deadline = time.monotonic() + limit
        while not done.query():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"weight-transfer group {self.name}: a broadcast did not complete in "
                    f"{limit:.0f} s (an engine never joined it); the group is abandoned"
                )
            time.sleep(0.005)

    def destroy(self) -> None:
        """After a healthy use (nothing pending): the communicator freed."""
        self._end("ncclCommDestroy")

    def abort(self) -> None:
        """After a failure: pending broadcasts end and the communicator is freed, no peer
        needed."""
        self._end("ncclCommAbort")

    def _end(self, function: str) -> None:
        comm, self.comm = self.comm, None
        if comm is None:
            return
        with torch.cuda.device(self.device):
            result = getattr(_nccl_library(), function)(_comm_pointer(comm))
        if result != 0:
            raise RuntimeError(f"{function} on weight-transfer group {self.name}: NCCL {result}")


def _comm_pointer(capsule) -> ctypes.c_void_p:
    """The ``ncclComm_t`` inside torch's communicator capsule."""
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return ctypes.c_void_p(get(capsule, CAPSULE_NAME))


def _nccl_library() -> ctypes.CDLL:
    """The NCCL library the process loaded (the container names it; the soname otherwise
    resolves to the copy already mapped)."""
    path = next((os.environ[v] for v in NCCL_LIBRARY_VARIABLES if os.environ.get(v)), None)
    library = ctypes.CDLL(path or "libnccl.so.2")
    for function in ("ncclCommAbort", "ncclCommDestroy"):
        getattr(library, function).argtypes = [ctypes.c_void_p]
        getattr(library, function).restype = ctypes.c_int
    return library
