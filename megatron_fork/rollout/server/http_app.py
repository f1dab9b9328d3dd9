"""sglang's routes over an ``EngineServer``, on the standard library's threading HTTP server
(one thread per request: a weight update blocks in its collective while health checks answer).
Bodies are JSON (query strings go to the routes that read them: vLLM's ``/pause``); in sglang
mode a protocol error or a busy server is a 400 with ``{"error": ...}``, a health
probe that saw no output in time a 503 and any other failure a 500, as sglang answers."""

import json
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, parse_qsl

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
        "/release_memory_occupation": ({"GET", "POST"}, server.release_memory_occupation),
        "/resume_memory_occupation": ({"GET", "POST"}, server.resume_memory_occupation),
    }


def sglang_error(error: Exception) -> tuple[HTTPStatus, dict]:
    """sglang's status and body for a failed request."""
    if isinstance(error, (ProtocolError, Busy, json.JSONDecodeError)):
        return HTTPStatus.BAD_REQUEST, {"error": str(error)}
    if isinstance(error, Unavailable):
        return HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(error)}
    traceback.print_exc()  # answered as sglang does, with the reason
    return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": repr(error)}


def _query(query: str, kind: list[str]) -> dict:
    """The query string: one value per key, or ``"query_lists"``: every value of a repeated
    key (vLLM's ``/wake_up?tags=a&tags=b``, read with ``query_params.getlist``)."""
    if kind == ["query_lists"]:
        return parse_qs(query)
    return dict(parse_qsl(query))


def _handler_class(routes: dict, answer_error=sglang_error):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self._dispatch("GET")

        def do_POST(self):
            self._dispatch("POST")

        def _dispatch(self, method: str) -> None:
            path, _, query = self.path.partition("?")
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""  # read even when refused
            methods, handler, *takes_query = routes.get(path, (set(), None))
            if handler is None or method not in methods:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route {method} {path}"})
                return
            try:
                body = json.loads(raw) if raw else {}
                if not isinstance(body, dict):
                    raise ProtocolError(f"the body must be a JSON object: {type(body).__name__}")
                args = (body, _query(query, takes_query)) if takes_query else (body,)
                self._reply(HTTPStatus.OK, handler(*args))
            except Exception as error:
                self._reply(*answer_error(error))

        def _reply(self, status: HTTPStatus, answer) -> None:
            """``answer`` None: an empty body (vLLM's ``/health``)."""
            data = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            if answer is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            pass  # one line per request would drown the trainer's log

    return Handler


def make_http_server(
    server: EngineServer, host: str, port: int, routes: dict | None = None, answer_error=None
) -> ThreadingHTTPServer:
    """Bound (port 0: a free one, read it from ``.server_address``), not yet serving.
    ``routes`` (default: sglang's over ``server``): path -> (methods, handler(body)), or
    (methods, handler(body, query), "query") for a route that reads its query string
    ("query_lists": each key's values as a list);
    ``answer_error``: an exception -> (status, body) (default: sglang's)."""
    handler = _handler_class(routes or _routes(server), answer_error or sglang_error)
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    return httpd
