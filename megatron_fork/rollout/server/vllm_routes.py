"""vLLM's routes over the CPU server's engine (``--protocol vllm``): what ``vllm serve`` with
``VLLM_SERVER_DEV_MODE=1 --enable-scale-out --weight-transfer-config '{"backend":"nccl"}'``
answers, in its bodies and status codes (vLLM 0.34.0):

- ``GET /health``: 200, empty body (``serve/instrumentator/health.py``; generates nothing).
- ``POST /inference/v1/generate`` (``scale_out/token_in_token_out``): one choice per request.
- The RL router (``entrypoints/rl/online/api_router.py``): ``/pause?mode=&clear_cache=``,
  ``/resume``, ``GET /is_paused``, ``/init_weight_transfer_engine {init_info}``,
  ``/start_weight_update``, ``/update_weights {update_info}``,
  ``/finish_weight_update {weight_version?}``, ``/shutdown_weight_transfer_engine``,
  ``/update_weight_version {new_version}``, ``GET /weight_info``, ``GET /get_world_size``.
- ``GET /v1/models``: the served model (``id`` and ``root``: its folder).
- Sleep mode (``--enable-sleep-mode``): ``/sleep``, ``/wake_up``, ``GET /is_sleeping``
  (``vllm_sleep.py``).
"""

import traceback
from http import HTTPStatus

from megatron_fork.rollout.server.engine_server import EngineServer
from megatron_fork.rollout.server.vllm_errors import (
    VllmHttpError,
    WorkerError,
    bad_request,
    invalid,
    worker_failed,
)
from megatron_fork.rollout.server.vllm_generation import VllmGeneration
from megatron_fork.rollout.server.vllm_sleep import VllmSleep
from megatron_fork.rollout.server.vllm_transfer import VllmTransfer
from megatron_fork.rollout.sglang_protocol import ProtocolError
from megatron_fork.rollout.vllm_protocol import GENERATE_PATH


class VllmServer:
    """The CPU server's engine behind vLLM's routes."""

    def __init__(self, core: EngineServer, eos_token_id: int | None):
        self.core = core
        self.generation = VllmGeneration(core, eos_token_id)
        self.transfer = VllmTransfer(core)
        self.sleep = VllmSleep(self.generation)

    def routes(self) -> dict:
        gen, worker = self.generation, self.transfer
        core = worker.core_call  # engine-core calls: they wait behind a weight call
        return {
            "/health": ({"GET"}, lambda body: None),
            GENERATE_PATH: ({"POST"}, gen.generate),
            "/pause": ({"POST"}, lambda body, query: core(lambda: gen.pause(query)), "query"),
            "/resume": ({"POST"}, lambda body: core(gen.resume)),
            "/is_paused": ({"GET"}, lambda body: core(gen.is_paused)),
            "/init_weight_transfer_engine": ({"POST"}, self._init),
            "/start_weight_update": ({"POST"}, lambda body: self._call(worker.start, "started")),
            "/update_weights": ({"POST"}, self._update),
            "/finish_weight_update": ({"POST"}, self._finish),
            "/shutdown_weight_transfer_engine": (
                {"POST"},
                lambda body: self._call(worker.shutdown, "shut down", "transfer"),
            ),  # fmt: skip
            "/update_weight_version": (
                {"POST"},
                lambda body: core(lambda: self._update_weight_version(body)),
            ),
            "/weight_info": ({"GET"}, lambda body: core(lambda: {"weight_version": gen.version})),
            "/get_world_size": ({"GET"}, lambda body, query: {"world_size": 1}, "query"),
            "/v1/models": ({"GET"}, lambda body: self._models()),
            **self._sleep_routes(core),
        }

    def _sleep_routes(self, core) -> dict:
        """Sleep mode (``vllm_sleep``): engine-core calls, one at a time with the others."""
        sleep = self.sleep
        return {
            "/sleep": ({"POST"}, lambda body, query: core(lambda: sleep.sleep(query)), "query"),
            "/wake_up": (
                {"POST"},
                lambda body, query: core(lambda: sleep.wake_up(query)),
                "query_lists",
            ),
            "/is_sleeping": ({"GET"}, lambda body: core(sleep.is_sleeping)),
        }

    def _models(self) -> dict:
        """``/v1/models`` (``openai/models``): the served model, its folder as ``root`` (the
        evaluator records it)."""
        path = self.core.model_path
        card = {"id": path, "object": "model", "owned_by": "vllm", "root": path, "parent": None}
        return {"object": "list", "data": [card]}

    @staticmethod
    def _call(method, done: str, what: str = "update", *args) -> dict:
        method(*args)
        subject = "Weight transfer" if what == "transfer" else "Weight update"
        return {"message": f"{subject} {done}"}

    def _init(self, body: dict) -> dict:
        init_info = _embedded(body, "init_info", dict)
        self.transfer.init(init_info)
        return {"message": "Weight transfer initialized"}

    def _update(self, body: dict) -> dict:
        update_info = _embedded(body, "update_info", (dict, list))
        self.transfer.update(update_info)
        return {"message": "Weights updated"}

    def _finish(self, body: dict) -> dict:
        version = _embedded(body, "weight_version", str, required=False)
        self.transfer.finish()
        if version is not None:  # after the workers finished (AsyncLLM.finish_weight_update)
            self.generation.set_version(version)
        return {"message": "Weight update finished"}

    def _update_weight_version(self, body: dict) -> dict:
        version = _embedded(body, "new_version", str)
        self.generation.set_version(version)
        return {"success": True, "new_version": version}


def _embedded(body: dict, key: str, kind, required: bool = True):
    """A FastAPI ``Body(embed=True)`` field: missing (when required) or of the wrong type is
    a 400 validation error naming ``body.<key>``."""
    value = body.get(key)
    if value is None:
        if required:
            raise invalid(f"1 validation error:\n  Field required (body.{key})", f"body.{key}")
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise invalid(
            f"1 validation error:\n  Input should be a valid {getattr(kind, '__name__', kind)}"
            f" (body.{key}={value!r})",
            f"body.{key}",
        )
    return value


def vllm_error(error: Exception) -> tuple[HTTPStatus, dict]:
    """vLLM's status and body for a failed request (``vllm_errors``)."""
    if isinstance(error, ProtocolError):  # a generate body vLLM's request model refuses
        error = invalid(f"1 validation error:\n  {error}")
    elif isinstance(error, WorkerError):
        error = worker_failed(error)
    elif isinstance(error, ValueError):  # e.g. a malformed JSON body
        error = bad_request(str(error))
    elif not isinstance(error, VllmHttpError):
        traceback.print_exc()
        error = worker_failed(error)
    return error.status, error.body()
