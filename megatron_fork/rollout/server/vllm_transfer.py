"""vLLM's weight-transfer worker, as the CPU server imitates it: one worker (TP 1) that joins the
trainer's group over gloo and loads the buckets it is sent, inside update sessions.

The rules are ``v1/worker/gpu_worker.py`` (``Worker``: ``init_weight_transfer_engine`` ..
``finish_weight_update``) and ``distributed/weight_transfer/nccl_engine.py``
(``NCCLWeightTransferEngine``), in 0.34.0:
- init parses ``init_info`` (unknown fields refused) and joins at ``rank_offset``; a second init
  replaces the group (vLLM keeps no check; the old communicator is dropped, here destroyed).
- ``start_weight_update`` during a session raises; it marks the weights incomplete until a
  ``finish_weight_update`` succeeds.
- ``update_weights`` outside a session raises; any error inside it ends the session (the
  weights stay incomplete; a new start is needed).
- ``finish_weight_update`` without a session raises; its ``weight_version`` is set after it.
- ``shutdown_weight_transfer_engine`` during a session raises.
- Incomplete weights do not stop generation: nothing in vLLM 0.34.0 reads
  ``is_inference_ready`` (``core.py:1206``); the trainer pauses around a sync.
Every refusal here is a worker error, a 500 as vLLM answers it (``vllm_errors``).

The rendezvous: vLLM's own is ``nccl_unique_id_b64`` (GPU, refused here) or its
``StatelessProcessGroup`` store; this server meets the trainer's torch gloo group in the TCP
store at ``master_address:master_port``, under ``TRANSFER_STORE_PREFIX`` and the group name the
trainer publishes at ``TRANSFER_GROUP_NAME_KEY``.
"""

import threading

from torch.distributed import TCPStore

from megatron_fork.rollout.flattened_bucket import nbytes_of
from megatron_fork.rollout.server.engine_server import EngineServer
from megatron_fork.rollout.server.vllm_errors import WorkerError
from megatron_fork.rollout.sglang_protocol import ProtocolError
from megatron_fork.rollout.vllm_protocol import (
    TRANSFER_GROUP_NAME_KEY,
    TRANSFER_STORE_PREFIX,
    UpdateInfo,
    packed_chunks,
    parse_init_info,
    parse_update_info,
)
from megatron_fork.rollout.weight_group import DEFAULT_TIMEOUT as GROUP_TIMEOUT
from megatron_fork.rollout.weight_group import DTYPES, join_weight_group, receive_tensors


class VllmTransfer:
    def __init__(self, core: EngineServer):
        self.core = core
        self._lock = threading.Lock()  # one weight call at a time, as vLLM's collective_rpc
        self._group = None
        self._init = None
        self._active = False
        self.incomplete = False
        self._last_update: UpdateInfo | None = None

    def init(self, init_info: dict) -> None:
        try:
            init = parse_init_info({"init_info": init_info})
        except ProtocolError as error:
            raise WorkerError(f"Invalid init_info for NCCLWeightTransferEngine: {error}") from error
        if init.nccl_unique_id_b64 is not None:
            raise WorkerError(
                "nccl_unique_id_b64: this CPU server joins the weight-transfer group over gloo; "
                "give master_address + master_port (a GPU vLLM engine takes the NCCL id)"
            )
        with self._lock:
            self._drop_group()
            store = TCPStore(
                init.master_address, init.master_port, init.world_size, False,
                timeout=GROUP_TIMEOUT,
            )  # fmt: skip
            name = store.get(TRANSFER_GROUP_NAME_KEY).decode()
            self._group = join_weight_group(
                store, init.rank_offset, init.world_size, name, "gloo", GROUP_TIMEOUT,
                store_prefix=TRANSFER_STORE_PREFIX,
            )  # fmt: skip
            self._init, self._last_update = init, None

    def shutdown(self) -> None:
        with self._lock:
            if self._active:
                raise WorkerError("Cannot release a trainer connection during a weight update")
            self._drop_group()

    def _drop_group(self) -> None:
        if self._group is not None:
            self._group.destroy()
        self._group = None

    def core_call(self, call):
        """``call()`` as vLLM's engine core runs its utility calls (pause, resume, is_paused,
        weight_info, versions): one at a time with the weight calls, so while a weight call is
        stuck in a collective (its sender died mid-broadcast) they wait behind it, and the
        trainer takes the engine for dead (``vllm_client.answers``) and restarts it."""
        with self._lock:
            return call()

    def start(self) -> None:
        with self._lock:
            if self._active:
                raise WorkerError(
                    "start_weight_update called while a weight update is already active. "
                    "Call finish_weight_update first."
                )
            self.incomplete = True  # "Starting may already move weights"
            self._active = True

    def update(self, update_info) -> None:
        with self._lock:
            if not self._active:
                raise WorkerError("start_weight_update must be called before update_weights.")
            try:
                self._receive_and_load(update_info)
            except Exception as error:
                self._active = False  # the session ends; the weights stay incomplete
                if isinstance(error, WorkerError):
                    raise
                raise WorkerError(str(error)) from error

    def finish(self) -> None:
        with self._lock:
            if not self._active:
                raise WorkerError(
                    "finish_weight_update called without a matching start_weight_update."
                )
            self._active, self.incomplete = False, False

    def _receive_and_load(self, update_info) -> None:
        if isinstance(update_info, list):  # one entry per global worker rank: ours is 0
            update_info = update_info[0]
        info = dict(update_info)
        src = info.pop("src", 0)
        update = parse_update_info({"update_info": info})
        if self._group is None:
            raise WorkerError(
                "NCCL weight transfer not initialized. Call init_transfer_engine() first."
            )
        if not (isinstance(src, int) and 0 <= src < self._init.rank_offset):
            raise WorkerError(
                f"NCCL update src must be a sender rank in [0, {self._init.rank_offset}), "
                f"got {src!r}."
            )
        if src != 0:
            raise WorkerError("this CPU server receives from the group's rank 0 only (src=0)")
        if update.names:
            self._last_update = update
        elif self._last_update is not None:  # empty lists: the previous call's metadata
            update = self._last_update
        self.core.apply_weights(self.core.dequantized(self._receive(update)), None)

    def _receive(self, update: UpdateInfo) -> list:
        """Per tensor: one broadcast each, in name order. Packed: uint8 chunks, each closed
        after the tensor that takes it past the buffer size (``packed_tensor.py``
        ``packed_nccl_broadcast_consumer``)."""
        unknown = sorted({d for d in update.dtype_names if d not in DTYPES})
        if unknown:
            raise WorkerError(f"unsupported dtype_names {unknown}")
        if not self._init.packed:
            return receive_tensors(self._group, update.names, update.dtype_names, update.shapes)
        sizes = [
            nbytes_of(shape, DTYPES[d])
            for shape, d in zip(update.shapes, update.dtype_names, strict=True)
        ]
        named = []
        for chunk in packed_chunks(sizes, self._init.packed_buffer_size_bytes):
            pick = lambda values: [values[i] for i in chunk]  # noqa: B023, E731
            named += receive_tensors(
                self._group, pick(update.names), pick(update.dtype_names), pick(update.shapes),
                flattened=True,
            )  # fmt: skip
        return named
