"""vLLM's HTTP error answers, as the CPU server gives them in vLLM mode.

vLLM answers an error with ``{"error": {"message", "type", "param", "code"}}`` (``ErrorResponse``,
``entrypoints/serve/engine/protocol.py``): a request body or query that fails validation is a
400 of type "Bad Request" (``handlers/validation.py``); a request refused while generation is
paused is a ``RetryableRequestError``, a 503 of type "ServiceUnavailableError"
(``outputs.RequestError.to_exception``, ``error_response.create_error_response``); a failure
inside a worker (every weight-transfer call is a ``collective_rpc``) comes back from the engine
core as a plain ``Exception("Call to collective_rpc method failed: ...")``
(``EngineCoreProc._invoke_utility_method``, ``core_client._process_utility_output``): a 500 of
type "InternalServerError".
"""

from http import HTTPStatus


class VllmHttpError(Exception):
    """An answer other than 200, with vLLM's error body."""

    def __init__(self, status: HTTPStatus, message: str, kind: str, param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param

    def body(self) -> dict:
        return {
            "error": {
                "message": str(self),
                "type": self.kind,
                "param": self.param,
                "code": int(self.status),
            }
        }


PAUSED_MESSAGE = "Generation is paused. Please retry after it resumes."
"""``EngineCore._reject_add_while_paused`` (code ``engine_paused``, retryable)."""


def engine_paused() -> VllmHttpError:
    """A new request while paused in abort or wait mode."""
    return VllmHttpError(HTTPStatus.SERVICE_UNAVAILABLE, PAUSED_MESSAGE, "ServiceUnavailableError")


def invalid(message: str, param: str | None = None) -> VllmHttpError:
    """A body or query that vLLM's request models refuse."""
    return VllmHttpError(HTTPStatus.BAD_REQUEST, message, "Bad Request", param)


def bad_request(message: str) -> VllmHttpError:
    """A ValueError raised while serving a request (``create_error_response`` fallback)."""
    return VllmHttpError(HTTPStatus.BAD_REQUEST, message, "BadRequestError")


class WorkerError(RuntimeError):
    """A worker method refused or failed (vLLM's ``RuntimeError``/``ValueError`` in
    ``gpu_worker.py`` or the transfer engine)."""


def worker_failed(error: Exception) -> VllmHttpError:
    return VllmHttpError(
        HTTPStatus.INTERNAL_SERVER_ERROR,
        f"Call to collective_rpc method failed: {error}",
        "InternalServerError",
    )
