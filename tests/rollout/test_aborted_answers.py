"""An aborted sample is read by its finish reason first and re-sent, never fails the batch,
even when its log-prob ids do not match its ``output_ids``: sglang 0.5.15.post1 slices
log-probs to ``max(len(output_ids), 1)`` (``scheduler_components/output_streamer.py``), so an
abort with no ids can carry one log-prob. Any other answer must still agree in full. The
engine-level case talks to an sglang-shaped server over real HTTP on loopback."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from megatron_fork.rollout.server_engine import ServerRolloutEngine
from megatron_fork.rollout.sglang_protocol import ProtocolError, samples_from_response
from megatron_fork.rollout.types import FinishReason, GenerationRequest, SamplingParams

REQUESTS = [
    GenerationRequest((1, 2), SamplingParams(max_new_tokens=2, seed=i), f"r{i}") for i in range(2)
]


def _answer(output_ids, logprob_ids, finish):
    pairs = [[-0.25 * (k + 1), t, None] for k, t in enumerate(logprob_ids)]
    meta = {"finish_reason": finish, "weight_version": "0", "output_token_logprobs": pairs}
    return {"text": "", "output_ids": list(output_ids), "meta_info": meta}


ABORT = {"type": "abort", "message": "Abort before prefill"}
ABORTED = [_answer([], [17], ABORT), _answer([4, 9], [4, 8], ABORT)]  # ids disagree
FINISHED = [_answer([4, 5], [4, 5], {"type": "length", "length": 2})] * 2


def test_an_aborted_answer_whose_ids_disagree_parses():
    samples = samples_from_response(ABORTED, REQUESTS)
    assert [s.finish_reason for s in samples] == [FinishReason("abort")] * 2
    assert [s.output_ids for s in samples] == [(), (4,)]  # kept while the ids agree
    assert [s.output_logprobs for s in samples] == [(), (-0.25,)]
    finished = _answer([4, 9], [4, 8], {"type": "length", "length": 2})
    with pytest.raises(ProtocolError, match="logprob ids differ from output_ids"):
        samples_from_response([finished], REQUESTS[:1])


def _sglang_like_server(answers: list):
    """Answers the n-th ``/generate`` with ``answers[n]`` (one output per request sent)."""
    calls = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append(body["rid"])
            data = json.dumps(answers[len(calls) - 1][: len(body["rid"])]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, calls


def test_an_aborted_answer_whose_ids_disagree_is_sent_again():
    server, calls = _sglang_like_server([ABORTED, FINISHED])
    try:
        engine = ServerRolloutEngine([f"http://127.0.0.1:{server.server_address[1]}"])
        samples = engine.generate(REQUESTS)
    finally:
        server.shutdown(), server.server_close()
    assert calls == [["r0", "r1"], ["r0", "r1"]]
    assert [(s.request_id, s.output_ids, s.finish_reason.kind) for s in samples] == [
        ("r0", (4, 5), "length"), ("r1", (4, 5), "length"),
    ]  # fmt: skip
    assert engine.counters["requests_retried"] == 2
