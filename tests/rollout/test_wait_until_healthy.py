"""The trainer waits for engines it did not start (sglang on a Slurm node group) before its
first weight sync: real HTTP servers on loopback that become healthy late, never, or do not
listen at all."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from megatron_fork.rollout.server_pool import wait_until_healthy
from tests.support.served_engine import served_engine


def _server(healthy_after_s: float):
    """/health_generate answers 503 until ``healthy_after_s`` after start, then 200."""
    ready_at = time.monotonic() + healthy_after_s

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/health_generate" and time.monotonic() >= ready_at
            body = json.dumps({} if ok else {"error": "loading"}).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_waits_until_every_server_is_healthy():
    (fast, fast_url), (slow, slow_url) = _server(0.0), _server(1.0)
    try:
        start = time.monotonic()
        wait_until_healthy([fast_url, slow_url], timeout_s=30, poll_s=0.1)
        assert time.monotonic() - start >= 1.0
    finally:
        fast.shutdown(), slow.shutdown()


def test_servers_that_never_get_healthy_are_named():
    never, never_url = _server(3600.0)
    closed, closed_url = _server(0.0)
    closed.shutdown(), closed.server_close()  # nothing listens there any more
    try:
        with pytest.raises(TimeoutError) as error:
            wait_until_healthy([never_url, closed_url], timeout_s=1.0, poll_s=0.2)
        assert never_url in str(error.value) and closed_url in str(error.value)
    finally:
        never.shutdown()


def test_a_server_left_paused_by_a_dead_trainer_is_resumed():
    """A trainer killed mid-sync leaves external engines paused; the next trainer's wait must
    not time out on them (the CPU engine server's health probe waits on a pause, as sglang's)."""
    with served_engine(health_timeout_s=0.5) as (_, client):
        client.pause("abort")  # what the dead trainer's sync left behind
        assert not client.healthy(1.0)
        wait_until_healthy([client.url], timeout_s=20, poll_s=1.0)
        assert client.healthy(5.0)
