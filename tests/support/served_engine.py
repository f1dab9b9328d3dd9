"""A CPU rollout server (``EngineServer`` over the tiny Qwen3's torch engine) on loopback HTTP,
in a thread of the test process, with a client for it."""

import threading
from contextlib import contextmanager

from megatron_fork.rollout.http_client import ServerClient
from megatron_fork.rollout.server.engine_server import EngineServer
from megatron_fork.rollout.server.http_app import make_http_server
from megatron_fork.rollout.torch_engine import TorchRolloutEngine
from tests.support.tiny_qwen3 import tiny_qwen3_model


@contextmanager
def served_engine(**server_options):
    """(server, client) of a fresh server; ``server_options`` go to ``EngineServer``."""
    server = EngineServer(TorchRolloutEngine(tiny_qwen3_model(seed=0)), "tiny", **server_options)
    httpd = make_http_server(server, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    host, port = httpd.server_address[:2]
    try:
        yield server, ServerClient(f"http://{host}:{port}", timeout_s=60)
    finally:
        httpd.shutdown()
        httpd.server_close()
