"""Generation as a vLLM engine gates it, over the CPU server's engine (``EngineServer``: its
engine lock, request ids and torch engine): ``/pause`` in three modes, ``/resume``, and the
weight version stamped on every output step.

vLLM's rules (``v1/engine/core.py`` ``pause_scheduler``/``pause_generation``/
``_reject_add_while_paused``; ``entrypoints/rl/online/api_router.py``):
- ``abort``: every admitted request ends now with finish reason ``abort`` and the tokens it
  has (a request still queued ends with none); ``/pause`` returns once they have answered.
- ``wait``: admitted requests run to their end; ``/pause`` returns once they have.
- ``abort`` and ``wait``: new requests are refused (503 ``engine_paused``) until ``/resume``.
- ``keep``: running requests freeze between two steps and queued ones wait; new requests are
  taken and wait too; all go on after ``/resume``, under whatever version is current then (one
  output may then span two versions).

A frozen generation gives the engine lock back, so weights can be applied while it waits.
"""

import dataclasses
import threading

from megatron_fork.rollout.server.engine_server import EngineServer
from megatron_fork.rollout.server.vllm_errors import engine_paused, invalid
from megatron_fork.rollout.types import GenerationRequest
from megatron_fork.rollout.vllm_protocol import INITIAL_VERSION, request_from_body, response_for

PAUSE_MODES = ("abort", "wait", "keep")


class VllmGeneration:
    def __init__(self, core: EngineServer, eos_token_id: int | None):
        """``eos_token_id``: the model's EOS; a sample ends there unless ``ignore_eos`` (vLLM's
        ``SamplingParams.eos_token_id``; that stop reports ``stop_reason`` None)."""
        self.core, self.eos_token_id = core, eos_token_id
        self.version = INITIAL_VERSION
        """vLLM's ``EngineCore._weight_version``: "default" until an update names one."""
        self._cond = threading.Condition()
        self._mode: str | None = None  # the pause mode; None while running
        self._abort_epoch = 0  # +1 per pause(abort): requests admitted before it end
        self._admitted = 0  # requests taken and not yet answered
        self._stepping = False  # a generation holds the engine between two steps

    def generate(self, body: dict) -> dict:
        request = self._request(body)
        with self._cond:
            if self._mode in ("abort", "wait"):
                raise engine_paused()
            self._admitted += 1
            epoch = self._abort_epoch
        try:
            with self.core.claimed([request.request_id]):
                return self._run(request, epoch)
        finally:
            with self._cond:
                self._admitted -= 1
                self._cond.notify_all()

    def _request(self, body: dict) -> GenerationRequest:
        request = request_from_body(body)
        sampling = body.get("sampling_params") or {}
        if self.eos_token_id is None or sampling.get("ignore_eos"):
            return request
        stops = (*request.sampling.stop_token_ids, self.eos_token_id)
        sampling = dataclasses.replace(request.sampling, stop_token_ids=stops)
        return dataclasses.replace(request, sampling=sampling)

    def _run(self, request: GenerationRequest, epoch: int) -> dict:
        versions: list[tuple[int, str]] = []
        lock = self.core.engine_lock
        lock.acquire()
        try:
            self.core.memory.check_resident("generation")  # resumed while asleep: refused
            step = iter(range(1 << 62))
            gate = lambda: self._gate(next(step), epoch, versions)  # noqa: E731
            (sample,) = self.core.engine.generate([request], abort=gate)
        finally:
            with self._cond:
                self._stepping = False
                self._cond.notify_all()
            lock.release()
        eos = () if self.eos_token_id is None else (self.eos_token_id,)
        return response_for(sample, eos, versions)

    def _gate(self, step: int, epoch: int, versions: list) -> bool:
        """Asked before each decoding step (under the engine lock): True ends the request as
        aborted; in ``keep`` mode it waits here, the engine lock given back, until resumed.
        Records the version each step's token is sampled under."""
        lock = self.core.engine_lock
        while True:
            with self._cond:
                if self._abort_epoch != epoch:
                    return True
                if self._mode != "keep":
                    self._stepping = True
                    if not versions or versions[-1][1] != self.version:
                        versions.append((step, self.version))
                    return False
                self._stepping = False
                self._cond.notify_all()
            lock.release()
            try:
                with self._cond:
                    self._cond.wait_for(lambda: self._mode != "keep" or self._abort_epoch != epoch)
            finally:
                lock.acquire()

    def pause(self, query: dict) -> dict:
        mode = query.get("mode", "abort")
        if mode not in PAUSE_MODES:
            raise invalid(
                f"1 validation error:\n  Input should be 'abort', 'wait' or 'keep' (mode={mode!r})",
                "query.mode",
            )
        clear_cache = str(query.get("clear_cache", "true")).lower()
        if clear_cache not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise invalid(
                "1 validation error:\n  Input should be a valid boolean", "query.clear_cache"
            )
        with self._cond:
            self._mode = mode
            if mode == "abort":
                self._abort_epoch += 1
            self._cond.notify_all()
            if mode == "keep":  # the running generation has frozen, or ended
                self._cond.wait_for(lambda: not self._stepping)
            else:  # every admitted request has answered (aborted, or run to its end)
                self._cond.wait_for(lambda: self._admitted == 0)
        return {"status": "paused"}  # the torch engine keeps no cache to clear

    def resume(self) -> dict:
        with self._cond:
            self._mode = None
            self._cond.notify_all()
        return {"status": "resumed"}

    def is_paused(self) -> dict:
        with self._cond:
            return {"is_paused": self._mode is not None}

    def set_version(self, version: str) -> None:
        with self._cond:
            self.version = version
