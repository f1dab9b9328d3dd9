"""sglang's routes over an ``EngineServer``, on the standard library's threading HTTP server
(one thread per request: a weight update blocks in its collective while health checks answer).
Bodies are JSON; a protocol error or a busy server is a 400 with ``{"error": ...}``, a health
probe that saw no output in time a 503 and any other failure a 500, as sglang answers."""

import json
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from megatron_fork.rollout.server.engine_server import Busy, EngineServer, Unavailable
from megatron_fork.rollout.sglang_protocol import ProtocolError


def _routes(server: EngineServer) -> dict:
    """path -> (allowed methods, handler(body) -> JSON-able answer)."""
    return {
        "/health": ({"GET"}, lambda body: server.health_generate()),  # as sglang's: generates
        "/health_generate": ({"GET"}, lambda body: server.health_generate()),
        "/generate": ({"POST"}, server.generate),
        "/flush_cache": ({"GET", "POST"}, lambda body: server.flush_cache()),
        "/pause_generation": ({"POST"}, server.pause),
        "/continue_generation": ({"POST"}, lambda body: server.resume()),
        "/init_weights_update_group": ({"POST"}, server.init_weights_update_group),
        "/destroy_weights_update_group": ({"POST"}, server.destroy_weights_update_group),
        "/update_weights_from_distributed": ({"POST"}, server.update_weights_from_distributed),
        "/update_weights_from_disk": ({"POST"}, server.update_weights_from_disk),
        "/update_weight_version": ({"POST"}, server.update_weight_version),
        "/model_info": ({"GET"}, lambda body: server.model_info()),
    }


def _handler_class(routes: dict):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self._dispatch("GET")

        def do_POST(self):
            self._dispatch("POST")

        def _dispatch(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""  # read even when refused
            methods, handler = routes.get(path, (set(), None))
            if handler is None or method not in methods:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route {method} {path}"})
                return
            try:
                body = json.loads(raw) if raw else {}
                if not isinstance(body, dict):
                    raise ProtocolError(f"the body must be a JSON object: {type(body).__name__}")
                self._reply(HTTPStatus.OK, handler(body))
            except (ProtocolError, Busy, json.JSONDecodeError) as error:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            except Unavailable as error:
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(error)})
            except Exception as error:  # answered as sglang does, with the reason
                traceback.print_exc()
                self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": repr(error)})

        def _reply(self, status: HTTPStatus, answer) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            pass  # one line per request would drown the trainer's log

    return Handler


def make_http_server(server: EngineServer, host: str, port: int) -> ThreadingHTTPServer:
    """Bound (port 0: a free one, read it from ``.server_address``), not yet serving."""
    httpd = ThreadingHTTPServer((host, port), _handler_class(_routes(server)))
    httpd.daemon_threads = True
    return httpd
