"""Liveness is not readiness. sglang 0.5.15.post1's ``/health`` runs a one-token generation
(SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION, on by default), which waits on a pause and answers
503 after SGLANG_HEALTH_CHECK_TIMEOUT; the CPU server's ``/health`` does the same. So a probe of
``/health`` judges a paused, live server dead (the trainer probes right after a failed weight
sync, with every server paused), while ``ServerClient.answers()`` reads ``/model_info`` and does
not. ``healthy()`` (``/health_generate``, startup readiness) still needs a generating server.
Real HTTP on loopback, the server in a thread of the test process."""

import time

import pytest

from megatron_fork.rollout.http_client import ServerClient, ServerError
from megatron_fork.rollout.types import GenerationRequest, SamplingParams
from tests.support.served_engine import served_engine
from tests.support.threads import Background

PROBE_TIMEOUT_S = 1.0
"""The server's health probe timeout (sglang's is 20 s), short to keep the test fast."""


@pytest.fixture
def served():
    with served_engine(health_timeout_s=PROBE_TIMEOUT_S) as pair:
        yield pair


def _health_probe(client: ServerClient, timeout_s: float = 5.0) -> bool:
    """The probe ``answers()`` used before: ``GET /health`` within 5 s."""
    try:
        client.call("/health", timeout_s=timeout_s)
        return True
    except ServerError:
        return False


def test_a_paused_live_server_answers_but_is_not_healthy(served):
    _, client = served
    assert _health_probe(client) and client.answers() and client.healthy()
    client.pause("abort")
    start = time.monotonic()
    with pytest.raises(ServerError) as unavailable:
        client.call("/health")
    assert unavailable.value.status == 503  # as sglang's, once its probe timeout passed
    assert time.monotonic() - start >= PROBE_TIMEOUT_S
    assert not _health_probe(client), "the /health probe judged a paused server alive"
    assert client.answers(), "answers() judged a paused, live server dead"
    assert not client.healthy()
    client.resume()
    assert _health_probe(client) and client.healthy()


def test_a_server_busy_generating_is_healthy_at_once(served):
    server, client = served
    long = [  # as test_engine_server's: runs for seconds on the tiny model
        GenerationRequest((1, 2, 3), SamplingParams(max_new_tokens=400, seed=i), f"r{i}")
        for i in range(8)
    ]
    running = Background(lambda: client.generate(long))
    deadline = time.monotonic() + 30
    while not server._generating:
        assert time.monotonic() < deadline, "the generation never started"
        time.sleep(0.005)
    start = time.monotonic()
    assert client.healthy(timeout_s=PROBE_TIMEOUT_S)  # output flows, as sglang judges it
    assert time.monotonic() - start < PROBE_TIMEOUT_S
    client.pause("abort")  # still running when the probe answered: it is aborted
    assert {s.finish_reason.kind for s in running.result()} == {"abort"}
    client.resume()
