"""One vLLM engine seen from the trainer (``vllm serve`` with ``VLLM_SERVER_DEV_MODE=1``,
``--enable-scale-out`` and a weight-transfer config; ``vllm_launch.py``), with the methods
``ServerRolloutEngine`` and the stage senders call on any rollout server, in vLLM's routes and
bodies (``vllm_protocol.py``).

How it differs from sglang's client, and why:
- Generation is one ``/inference/v1/generate`` call per sample (each its own seed), many in
  flight at once; vLLM batches them itself.
- While paused vLLM refuses new requests with 503 "Generation is paused" (sglang queues
  them): such a request comes back as an aborted sample (sent again by the caller), not as a
  dead server, and the other requests of the batch are kept.
- A weight update is a session per sender (``vllm_sync.py``): ``/start_weight_update`` before
  its first bucket, ``/finish_weight_update`` after its last; the controller pauses (abort,
  which also clears the caches) before and sets the version after all senders
  (``/update_weight_version``); vLLM stamps it on every output.
- vLLM's engine starts at version "default": the weights it loaded, version 0 here (sglang's
  ``--weight-version 0``).
- Control routes (``/pause``, ``/update_weights``, ...) are not covered by ``--api-key``:
  engines listen on a private interface only (``vllm_launch.py``).
"""

from concurrent.futures import ThreadPoolExecutor

from megatron_fork.rollout.http_client import PAUSE_TIMEOUT_S, ServerClient, ServerError
from megatron_fork.rollout.types import FinishReason, GenerationRequest, Sample
from megatron_fork.rollout.vllm_protocol import (
    GENERATE_PATH,
    InitInfo,
    UpdateInfo,
    generate_body,
    sample_from_response,
    version_number,
)

MAX_IN_FLIGHT = 256
"""Generation requests one client keeps open on its engine at once."""


class VllmClient:
    reports_release = True
    """``/is_sleeping`` answers whether its memory is released."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 600.0,
        api_key: str | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
    ):
        self._http = ServerClient(url, timeout_s, api_key)
        self.url, self.timeout_s, self.api_key = self._http.url, timeout_s, api_key
        self.max_in_flight = max_in_flight

    def call(self, path: str, body: dict | None = None, timeout_s: float | None = None):
        return self._http.call(path, body, timeout_s)

    # generation

    def generate(self, requests: list[GenerationRequest]) -> list[Sample]:
        """Every request at once (up to ``max_in_flight``); the first failure is raised."""
        if not requests:
            return []
        with ThreadPoolExecutor(min(len(requests), self.max_in_flight)) as pool:
            return list(pool.map(self._generate_one, requests))

    def _generate_one(self, request: GenerationRequest) -> Sample:
        try:
            answer = self.call(GENERATE_PATH, generate_body(request))
        except ServerError as error:
            if error.status == 503 and "paused" in str(error):
                return refused_while_paused(request)
            raise
        return sample_from_response(answer, request)

    # health and version

    def healthy(self, timeout_s: float = 20.0) -> bool:
        """Ready to serve: the engine core answers (``answers``)."""
        return self.answers(timeout_s)

    def answers(self, timeout_s: float = 5.0) -> bool:
        """Alive: ``/is_paused`` answers, a call that goes through the engine core (answered
        while paused). Not ``/health``: it stays 200 while the core is stuck in a collective
        (e.g. a weight broadcast whose sender died), and such an engine must be restarted."""
        try:
            self.call("/is_paused", timeout_s=timeout_s)
            return True
        except ServerError:
            return False

    def weight_version(self) -> int:
        """``/weight_info``'s version as an integer ("default": 0)."""
        return version_number(str(self.call("/weight_info", timeout_s=30.0)["weight_version"]))

    def world_size(self) -> int:
        """The engine's workers (TP x PP x DP): its ranks in a weight-transfer group."""
        return int(self.call("/get_world_size?include_dp=true", timeout_s=30.0)["world_size"])

    # the controller's side of a weight update

    def pause(self, mode: str = "abort") -> None:
        """Running requests end (``abort``: returned with finish reason abort; caches cleared)."""
        timeout_s = min(PAUSE_TIMEOUT_S, self.timeout_s)
        self.call(f"/pause?mode={mode}&clear_cache=true", {}, timeout_s=timeout_s)

    def resume(self) -> None:
        self.call("/resume", {})

    def prepare_for_update(self) -> None:
        """Paused (abort; vLLM clears its caches then), before a weight update."""
        self.pause("abort")

    # sleep mode (colocated engines, ``--enable-sleep-mode``)

    def release_memory(self) -> None:
        """``/sleep?level=2&mode=abort``: the scheduler paused (running requests aborted, new
        ones refused with 503), weights and KV cache dropped (``EngineCore.sleep``,
        ``v1/engine/core.py:1090-1141``). Level 2, not 1: the weights are synced after waking,
        so a copy on the host would only cost host memory and PCIe time."""
        self.call("/sleep?level=2&mode=abort", {})

    def resume_memory(self, part: str) -> None:
        """``/wake_up?tags=part`` ("weights": also the CUDA graphs, which are not deferrable,
        ``device_allocator/cumem.py:364-381``; "kv_cache"). The scheduler resumes by itself
        once nothing sleeps (``core.py:1164-1168``)."""
        self.call(f"/wake_up?tags={part}", {})

    def released(self) -> bool:
        """``/is_sleeping``: paused or any memory asleep."""
        return bool(self.call("/is_sleeping", timeout_s=30.0)["is_sleeping"])

    def wake_up(self) -> None:
        """Everything awake (no tags: all; tags not asleep are skipped)."""
        self.call("/wake_up", {})

    def commit_version(self, version: int) -> None:
        """After every stage's session: the engine's version becomes ``version``."""
        self.call("/update_weight_version", {"new_version": str(version)})

    # a sender's side of a weight update

    def start_session(self) -> None:
        """A weight-update session for one sender's buckets. One an abandoned sync left open
        (vLLM refuses a second start) is finished first: a full update follows."""
        try:
            self.call("/start_weight_update", {})
        except ServerError as error:
            if "already active" not in str(error):
                raise
            self.call("/finish_weight_update", {})
            self.call("/start_weight_update", {})

    def finish_session(self) -> None:
        """The sender's buckets are in; the version moves later (``commit_version``)."""
        self.call("/finish_weight_update", {})

    def init_weight_transfer(self, info: InitInfo) -> None:
        self.call("/init_weight_transfer_engine", info.body())

    def update_weights(self, info: UpdateInfo) -> None:
        self.call("/update_weights", info.body())

    def shutdown_weight_transfer(self, timeout_s: float | None = None) -> None:
        self.call("/shutdown_weight_transfer_engine", {}, timeout_s)


def refused_while_paused(request: GenerationRequest) -> Sample:
    """An aborted sample with nothing in it (version -1: never checked, never trained on)."""
    return Sample(request.request_id, tuple(request.prompt_ids), (), (), FinishReason("abort"), -1)
