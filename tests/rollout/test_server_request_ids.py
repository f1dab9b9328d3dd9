"""The CPU rollout server refuses request ids as sglang 0.5.15.post1 does (real HTTP on
loopback, the server in a thread of the test process): a ``/generate`` batch that repeats an id
is a 400 with sglang's message (``GenerateReqInput._validate_rid_uniqueness``), and so is an id
still in flight on the server, even one held by a pause (``TokenizerManager._init_req_state``).
"""

import time

import pytest

from megatron_fork.rollout.http_client import ServerError
from megatron_fork.rollout.sglang_protocol import generate_payload
from megatron_fork.rollout.types import GenerationRequest, SamplingParams
from tests.support.served_engine import served_engine
from tests.support.threads import Background


@pytest.fixture
def served():
    with served_engine() as pair:
        yield pair


def _request(rid: str, tokens: int = 2) -> GenerationRequest:
    return GenerationRequest((1, 2, 3), SamplingParams(max_new_tokens=tokens, seed=0), rid)


def test_a_batch_that_repeats_an_id_is_refused_with_sglangs_message(served):
    _, client = served
    batch = [_request("a"), _request("b"), _request("a"), _request("c"), _request("b")]
    with pytest.raises(ServerError) as refused:
        client.generate(batch)
    assert refused.value.status == 400
    assert "Duplicate request IDs detected within the request: ['a', 'b']" in str(refused.value)
    assert len(client.generate(batch[:2] + batch[3:4])) == 3  # distinct ids are served


def test_an_id_in_flight_is_refused_until_its_answer(served):
    server, client = served
    client.pause("abort")
    held = Background(lambda: client.generate([_request("x")]))  # waits on the pause
    deadline = time.monotonic() + 30
    while "x" not in server._in_flight:
        assert time.monotonic() < deadline and held.is_alive(), "the request never arrived"
        time.sleep(0.01)
    with pytest.raises(ServerError, match=r"400.*Duplicate request ID detected: x"):
        client.call("/generate", generate_payload([_request("y"), _request("x")]))
    assert server._in_flight == {"x"}  # the refused batch claimed nothing
    client.resume()
    assert held.result()[0].finish_reason.kind == "length"
    assert client.generate([_request("x")])[0].request_id == "x"  # free again
