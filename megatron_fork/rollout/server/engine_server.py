"""What a rollout server does, apart from HTTP: generation gated by pause/continue, weight
updates from a collective or from disk, the weight version.

One generation runs at a time (the torch engine batches the requests of a call); a pause in
``abort`` mode makes the running one return at its next decoding step with finish reason
``abort`` and waits until the engine is idle, as sglang's does before a weight update. A
bucket is received outside the engine lock and applied under it, so generation never sees a
half-applied bucket; the version changes only with a bucket that names one.
"""

import os
import sys
import threading
import time
import uuid
from contextlib import contextmanager

from torch.distributed import TCPStore

from megatron_fork.models.hf_weights import HFWeights
from megatron_fork.rollout.fp8 import dequantize_named_tensors
from megatron_fork.rollout.server.memory import (
    CUDA_GRAPH,
    KV_CACHE,
    WEIGHTS,
    ModelMemory,
)
from megatron_fork.rollout.sglang_protocol import (
    InitWeightsUpdateGroup,
    ProtocolError,
    UpdateWeightsFromDistributed,
    parse_body,
    requests_from_payload,
    response_for,
)
from megatron_fork.rollout.types import GenerationRequest, SamplingParams
from megatron_fork.rollout.weight_group import DEFAULT_TIMEOUT as GROUP_TIMEOUT
from megatron_fork.rollout.weight_group import join_weight_group, receive_tensors

PAUSE_MODES = ("abort", "retract", "in_place")
MEMORY_TAGS = (WEIGHTS, KV_CACHE, CUDA_GRAPH)
"""sglang's ``GPU_MEMORY_ALL_TYPES`` (``srt/constants.py:2-4``): what no tags means."""


class Busy(Exception):
    """The request needs an idle server (sglang answers 400; callers retry)."""


class Unavailable(Exception):
    """The health probe produced nothing in time (sglang answers 503)."""


class EngineServer:
    def __init__(self, engine, model_path: str, fp8: bool = False, health_timeout_s: float = 20.0):
        """``fp8``: weights arrive as blockwise FP8 (``fp8.fp8_named_tensors``) and are
        dequantised on receipt, so the engine computes with what an FP8 engine holds.
        ``health_timeout_s``: how long the health probe waits for output (sglang's
        ``SGLANG_HEALTH_CHECK_TIMEOUT``, 20 s by default)."""
        self.engine = engine
        self.health_timeout_s = health_timeout_s
        self._in_flight: set[str] = set()
        self._in_flight_lock = threading.Lock()
        self._generating = False
        self.model_path = model_path
        self.fp8 = fp8
        self._engine_lock = threading.Lock()
        self._open = threading.Event()
        self._open.set()  # cleared while generation is paused
        self._abort = False
        self._groups = {}
        self.memory = ModelMemory(engine.model, MEMORY_TAGS)

    def generate(self, body: dict) -> list[dict]:
        requests = requests_from_payload(body)
        with self.claimed([r.request_id for r in requests]), self._engine_when_open():
            self.memory.check_resident("generation")
            self._generating = True
            try:
                samples = self.engine.generate(requests, abort=lambda: self._abort)
            finally:
                self._generating = False
        return response_for(samples)

    @contextmanager
    def claimed(self, rids: list[str]):
        """The request ids, held from receipt to answer: sglang refuses an id still in flight
        on the server (``TokenizerManager._init_req_state``), a paused one included."""
        with self._in_flight_lock:
            taken = next((rid for rid in rids if rid in self._in_flight), None)
            if taken is not None:
                raise ProtocolError(f"Duplicate request ID detected: {taken}")
            self._in_flight.update(rids)
        try:
            yield
        finally:
            with self._in_flight_lock:
                self._in_flight.difference_update(rids)

    @contextmanager
    def _engine_when_open(self, timeout_s: float | None = None):
        """The engine, once generation is not paused (checked again under the lock, so a call
        that was waiting when a pause came in does not run while paused); ``Unavailable``
        when that takes longer than ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._open.wait(left):
                raise Unavailable(f"generation paused for {timeout_s} s")
            if not self._engine_lock.acquire(timeout=-1 if left is None else left):
                raise Unavailable(f"the engine was busy for {timeout_s} s")
            if self._open.is_set():
                break
            self._engine_lock.release()
        try:
            yield self.engine
        finally:
            self._engine_lock.release()

    @property
    def engine_lock(self) -> threading.Lock:
        """Held while the engine generates or weights are applied."""
        return self._engine_lock

    def health_generate(self) -> dict:
        """sglang's ``/health`` and ``/health_generate`` (SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION
        is on by default): healthy once the engine produces output, a running generation's
        included; a one-token probe otherwise, which waits on a pause like any request, so a
        paused server answers 503 after ``health_timeout_s``."""
        if self._generating and self._open.is_set():
            return {}
        rid = f"HEALTH_CHECK_{uuid.uuid4().hex}"  # unique, as sglang's probe ids
        probe = GenerationRequest((0,), SamplingParams(max_new_tokens=1, seed=0), rid)
        with self._engine_when_open(self.health_timeout_s):
            self.memory.check_resident("generation")
            self.engine.generate([probe])
        return {}

    def pause(self, body: dict) -> dict:
        mode = body.get("mode", "abort")
        if mode not in PAUSE_MODES:
            raise ProtocolError(f"pause mode {mode!r}: one of {PAUSE_MODES}")
        self._open.clear()
        self._abort = mode == "abort"
        with self._engine_lock:  # returns once the running generation has ended
            pass
        return {}

    def resume(self) -> dict:
        self._abort = False
        self._open.set()
        return {}

    def flush_cache(self) -> dict:
        if self._engine_lock.locked():
            raise Busy("generation in progress: flush_cache needs an idle server")
        return {}  # the torch engine keeps no KV cache between calls

    def init_weights_update_group(self, body: dict) -> dict:
        init = parse_body(InitWeightsUpdateGroup, body)
        if init.backend != "gloo":
            raise ProtocolError(f"backend {init.backend!r}: the CPU server joins with gloo")
        old = self._groups.pop(init.group_name, None)
        if old is not None:  # a trainer re-forming the group after a failure
            old.destroy()
        store = TCPStore(
            init.master_address, init.master_port, init.world_size, False, timeout=GROUP_TIMEOUT
        )
        self._groups[init.group_name] = join_weight_group(
            store, init.rank_offset, init.world_size, init.group_name, init.backend, GROUP_TIMEOUT
        )
        return {"success": True, "message": "joined"}

    def destroy_weights_update_group(self, body: dict) -> dict:
        """One named group goes, the others stay (each pipeline stage has its own); an unknown
        name is a 400, as sglang's ``ModelRunner.destroy_weights_update_group`` answers."""
        group = self._groups.pop(body.get("group_name", "weight_update_group"), None)
        if group is None:
            raise ProtocolError("The group to be destroyed does not exist.")
        group.destroy()
        return {"success": True, "message": "destroyed"}

    def update_weights_from_distributed(self, body: dict) -> dict:
        update = parse_body(UpdateWeightsFromDistributed, body)
        if update.load_format not in (None, "flattened_bucket"):
            raise ProtocolError(f"load_format {update.load_format!r}: None or flattened_bucket")
        group = self._groups.get(update.group_name)
        if group is None:
            raise ProtocolError(f"no weight-update group {update.group_name!r}: init it first")
        named = self.receive_bucket(
            group, update.names, update.dtypes, update.shapes, update.load_format is not None
        )
        return self.apply_weights(named, update.weight_version)

    def receive_bucket(self, group, names, dtypes, shapes, flattened: bool) -> list:
        """One bucket off a weight group, outside the engine lock (generation goes on), FP8
        dequantised when the weights arrive as FP8."""
        return self.dequantized(receive_tensors(group, names, dtypes, shapes, flattened))

    def dequantized(self, named: list) -> list:
        """Received tensors as the engine computes with them: FP8 weights (with their scales
        in the same list) dequantised when the engine serves FP8."""
        return dequantize_named_tensors(named) if self.fp8 else named

    def update_weights_from_disk(self, body: dict) -> dict:
        if "model_path" not in body:
            raise ProtocolError("update_weights_from_disk needs model_path")
        weights = HFWeights(body["model_path"])
        result = self.apply_weights(((n, weights[n]) for n in weights), body.get("weight_version"))
        self.model_path = body["model_path"]
        return {**result, "num_paused_requests": 0}

    def apply_weights(self, named, weight_version) -> dict:
        version = None if weight_version is None else int(weight_version)
        with self._engine_lock:
            self.memory.check_resident("a weight update")
            self.engine.update_weights(named, version=version)
        return {"success": True, "message": f"weight version {self.engine.version}"}

    def model_info(self) -> dict:
        return {
            "model_path": self.model_path,
            "model_type": "qwen3",
            "architectures": ["Qwen3ForCausalLM"],
            "weight_version": str(self.engine.version),
        }

    def update_weight_version(self, body: dict) -> dict:
        version = body.get("new_version")
        if not isinstance(version, str):
            raise ProtocolError(f"new_version must be a string (as sglang's), got {version!r}")
        with self._engine_lock:
            self.engine.update_weights((), version=int(version))
        return {"success": True, "message": str(self.engine.version)}

    def release_memory_occupation(self, body: dict) -> None:
        """sglang's ``/release_memory_occupation {tags}`` (``WeightUpdater.
        release_memory_occupation``, ``scheduler_components/weight_updater.py:184-225``): no
        tags means all; the scheduler asserts the server is fully idle, and a failed assertion
        ends the scheduler and the server (``scheduler.py:4343-4351``), as here. The handler
        returns nothing (an empty 200). A tag released twice ends it too: torch_memory_saver
        (0.0.10, the binary's "Cannot pause allocation that is not active") exits."""
        tags = _tags(body)
        if self._engine_lock.locked() or self._generating:
            fatal("AssertionError: release_memory_occupation needs an idle server")
        again = [tag for tag in tags if tag in self.memory.released]
        if again:  # torch_memory_saver's pause of a paused region exits the process
            fatal(f"Cannot pause allocation that is not active ({again[0]!r} released twice)")
        self.memory.release(tags)

    def resume_memory_occupation(self, body: dict) -> None:
        """sglang's ``/resume_memory_occupation {tags}`` (``weight_updater.py:229-262``): no
        tags means all; each tag is removed from the released set with ``set.remove``, so a tag
        that is not released raises KeyError in the scheduler, which ends the server."""
        tags = _tags(body)
        missing = [tag for tag in tags if tag not in self.memory.released]
        if missing:
            fatal(f"KeyError: {missing[0]!r} (resume_memory_occupation of a tag not released)")
        self.memory.resume(tags)


def _tags(body: dict) -> list[str]:
    """``ReleaseMemoryOccupationReqInput.tags`` (``io_struct.py:1698-1716``): None or [] is
    every tag."""
    tags = body.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise ProtocolError(f"tags must be a list of strings or null, got {tags!r}")
    return list(tags) if tags else list(MEMORY_TAGS)


def fatal(message: str) -> None:
    """What sglang's scheduler does on an exception: log it and take the server down
    (``run_scheduler_process``: SIGQUIT to the parent, then the process group killed)."""
    print(f"Scheduler hit an exception: {message}", file=sys.stderr, flush=True)
    os._exit(1)
