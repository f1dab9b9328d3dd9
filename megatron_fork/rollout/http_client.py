"""One rollout server (sglang, or this project's CPU server) seen from the trainer: JSON over
HTTP with timeouts, each endpoint a method. Errors say which server and which endpoint."""

import json
import time
import urllib.error
import urllib.request

from megatron_fork.rollout.sglang_protocol import (
    InitWeightsUpdateGroup,
    UpdateWeightsFromDistributed,
    UpdateWeightsFromTensor,
    generate_payload,
    samples_from_response,
)
from megatron_fork.rollout.types import GenerationRequest, Sample

RESUME_TAGS = {"weights": ("weights",), "kv_cache": ("kv_cache", "cuda_graph")}
"""sglang's tags (``srt/constants.py:2-4``) of each part resumed: CUDA graphs with the cache."""


class ServerError(RuntimeError):
    """A server did not answer, or answered with an error (``status`` None: no answer)."""

    def __init__(self, url: str, message: str, status: int | None = None):
        super().__init__(f"{url}: {message}")
        self.url, self.status = url, status


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""No proxies: rollout servers are reached directly (an ``http_proxy`` set for downloads
must not capture loopback or cluster-internal traffic)."""


PAUSE_TIMEOUT_S = 60.0
"""A pause with abort answers in seconds on a live engine; one that does not is stuck (e.g. in
the collective of a failed weight sync) and is taken as down, not waited on for a whole
request timeout."""


class ServerClient:
    reports_release = False
    """sglang 0.5.15 says nowhere whether its memory is released (``released_memory.py``)."""

    def __init__(self, url: str, timeout_s: float = 600.0, api_key: str | None = None):
        self.url = url.rstrip("/")
        self.timeout_s, self.api_key = timeout_s, api_key
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def call(self, path: str, body: dict | None = None, timeout_s: float | None = None):
        """GET without a body, POST with one; the decoded JSON answer (the text when the
        server answers in plain text, as sglang's /flush_cache does)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=self._headers)
        try:
            with _OPENER.open(request, timeout=timeout_s or self.timeout_s) as answer:
                raw = answer.read()
                if "json" not in (answer.headers.get("Content-Type") or ""):
                    return raw.decode(errors="replace")
                return json.loads(raw or b"null")
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            raise ServerError(self.url, f"{path} -> {error.code}: {detail}", error.code) from error
        except (urllib.error.URLError, OSError) as error:
            raise ServerError(self.url, f"{path}: no answer ({error})") from error

    def generate(self, requests: list[GenerationRequest]) -> list[Sample]:
        return samples_from_response(self.call("/generate", generate_payload(requests)), requests)

    def healthy(self, timeout_s: float = 20.0) -> bool:
        """Whether the server generates (``/health_generate`` runs a one-token generation):
        readiness after a start. sglang answers 503 while it warms up, and while generation
        is paused (after its 20 s probe timeout), so this is no liveness check."""
        try:
            self.call("/health_generate", timeout_s=timeout_s)
            return True
        except ServerError:
            return False

    def answers(self, timeout_s: float = 5.0) -> bool:
        """Whether the server answers at all (it may be busy or paused, not dead): a read of
        ``/model_info``, which generates nothing. sglang's ``/health`` is no such probe: it
        runs a generation (SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION, on by default) and
        waits on a pause."""
        try:
            self.call("/model_info", timeout_s=timeout_s)
            return True
        except ServerError:
            return False

    def weight_version(self) -> int:
        return int(self.call("/model_info", timeout_s=30.0)["weight_version"])

    def pause(self, mode: str = "abort") -> None:
        timeout_s = min(PAUSE_TIMEOUT_S, self.timeout_s)
        self.call("/pause_generation", {"mode": mode}, timeout_s=timeout_s)

    def resume(self) -> None:
        self.call("/continue_generation", {})

    def flush_cache(self) -> None:
        self.call("/flush_cache", {})

    def prepare_for_update(self, flush_timeout_s: float = 60.0) -> None:
        """Paused (abort) and caches flushed, before a weight update. sglang answers 400 to a
        flush while aborted requests still drain: it is asked again until ``flush_timeout_s``."""
        self.pause("abort")
        deadline = time.monotonic() + flush_timeout_s
        while True:
            try:
                self.flush_cache()
                return
            except ServerError as error:
                if error.status != 400 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def commit_version(self, version: int) -> None:
        """After every bucket of a sync: the server's weights become ``version``."""
        self.call("/update_weight_version", {"new_version": str(version)})

    def init_weights_update_group(self, init: InitWeightsUpdateGroup) -> dict:
        return self._succeeded("/init_weights_update_group", init.body())

    def update_weights_from_distributed(self, update: UpdateWeightsFromDistributed) -> dict:
        return self._succeeded("/update_weights_from_distributed", update.body())

    def _succeeded(self, path: str, body: dict) -> dict:
        answer = self.call(path, body)
        if not answer.get("success", False):
            raise ServerError(self.url, f"{path} failed: {answer.get('message')}")
        return answer

    def release_memory_occupation(self, tags: list[str] | None = None) -> None:
        """Colocated engines (``--enable-memory-saver``): free weights/KV cache for training.
        sglang asserts the server is fully idle (a failed assertion ends the server,
        ``weight_updater.py:184-187``): use ``release_memory``."""
        self.call("/release_memory_occupation", {"tags": tags})

    def resume_memory_occupation(self, tags: list[str] | None = None) -> None:
        """A tag that is not released ends the server (``set.remove``, ``weight_updater.py:
        229-236``): resume only what was released."""
        self.call("/resume_memory_occupation", {"tags": tags})

    def release_memory(self) -> None:
        """Everything released (weights, KV cache, CUDA graphs), the server left paused: paused
        (abort) and flushed first, so it is idle when it releases and stays so (a request
        sent while released waits on the pause instead of running on freed memory; sglang
        has no check of its own)."""
        self.prepare_for_update()
        self.release_memory_occupation(None)

    def resume_memory(self, part: str) -> None:
        """``part`` back: "weights", or "kv_cache" (with the CUDA graphs); generation stays
        paused (``finish_sync`` continues it)."""
        self.resume_memory_occupation(list(RESUME_TAGS[part]))

    def update_weights_from_tensor(self, update: UpdateWeightsFromTensor) -> dict:
        """Colocated engines (GPU): payloads of CUDA IPC handles, one per engine TP rank."""
        return self._succeeded("/update_weights_from_tensor", update.body())
