"""The engines an evaluation can sample with, chosen by name from ``ENGINES``.

Each entry builds a ``rollout.types.RolloutEngine`` (only ``generate`` is used) from the
settings and the opened model, and describes it for the summary:

- ``torch``: the trainer's in-process engine (``TorchRolloutEngine``) holding the model's
  weights: a Hugging Face folder is read directly; a Megatron checkpoint is loaded into
  Megatron (one process, gloo) and synced through the trainer's one mapping, as the analysis
  tools do (``analysis.model_source``).
- ``sglang`` / ``vllm``: servers that speak sglang's or vLLM's protocol at ``--server-url``
  (sglang, vLLM, or this project's CPU rollout server started with that ``--protocol``),
  through the trainer's client (``ServerRolloutEngine``: requests spread over servers, a dead
  server's requests go to the others). The servers serve the model themselves; what they
  report of it (sglang's ``/model_info``, vLLM's ``/v1/models``) is recorded in the summary
  and a different model path is warned about. The API key is read as the trainer reads it
  (``SGLANG_API_KEY``, ``VLLM_API_KEY``).
"""

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_fork.eval.model import OpenedModel
from megatron_fork.eval.settings import EvalSettings, EvalSetupError
from megatron_fork.rollout.http_client import ServerError
from megatron_fork.rollout.server_kinds import API_KEY_VARIABLES, SERVERS
from megatron_fork.rollout.torch_engine import TorchRolloutEngine


@dataclass(frozen=True)
class BuiltEngine:
    engine: object
    """A ``RolloutEngine``: ``generate(requests) -> samples``."""
    description: dict
    """What the summary records about it."""
    close: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class EngineChoice:
    build: Callable[[EvalSettings, OpenedModel], BuiltEngine]
    needs_urls: bool


def _torch_engine(settings: EvalSettings, model: OpenedModel) -> BuiltEngine:
    engine = TorchRolloutEngine(
        model.load_hf_model(), settings.engine_batch_size, pad_token_id=model.ids.pad
    )
    return BuiltEngine(engine, {"name": "torch", "threads": torch.get_num_threads()})


def _server_version(client, protocol: str) -> tuple[int, dict]:
    """The server's integer weight version and what the summary records of it (sglang's
    ``/model_info``; vLLM's ``/weight_info`` and served model from ``/v1/models``)."""
    try:
        if protocol == "sglang":
            info = client.call("/model_info", timeout_s=30.0)
            return int(info["weight_version"]), info
        models = client.call("/v1/models", timeout_s=30.0).get("data") or [{}]
        info = {"model_path": models[0].get("root"), "model": models[0].get("id")}
        return client.weight_version(), info
    except ServerError as error:
        variable = API_KEY_VARIABLES[protocol]
        hint = f"set {variable} to the servers' key" if "401" in str(error) else "start it"
        raise EvalSetupError(
            f"server {client.url} does not answer ({error}): {hint}, or fix --server-url"
        ) from None
    except (KeyError, TypeError, ValueError, AttributeError):
        raise EvalSetupError(
            f"server {client.url} reports no integer weight version; the trainer's client "
            "needs one: start sglang with --weight-version 0 (vLLM starts at 'default' = 0)"
        ) from None


def _server_engine(protocol: str):
    """The builder of an engine over servers speaking ``protocol`` at ``--server-url``."""

    def build(settings: EvalSettings, model: OpenedModel) -> BuiltEngine:
        from megatron_fork.rollout.server_engine import ServerRolloutEngine

        api_key = os.environ.get(API_KEY_VARIABLES[protocol])  # as the trainer's (controller)
        make_client = SERVERS[protocol].client
        clients = [
            make_client(u, settings.request_timeout_s, api_key) for u in settings.server_urls
        ]
        seen = [_server_version(client, protocol) for client in clients]
        versions = {version for version, _ in seen}
        if len(versions) > 1:
            listing = ", ".join(f"{c.url}: {v}" for c, (v, _) in zip(clients, seen, strict=True))
            raise EvalSetupError(f"the servers hold different weight versions ({listing})")
        for client, (_, info) in zip(clients, seen, strict=True):
            _warn_other_model(client.url, info.get("model_path"), model.source)
        engine = ServerRolloutEngine(
            [c.url for c in clients],
            None,
            settings.request_timeout_s,
            version=versions.pop(),
            api_key=api_key,
            protocol=protocol,
        )
        description = {"name": settings.engine, "servers": [info for _, info in seen]}
        return BuiltEngine(engine, description, engine.close)

    return build


def _warn_other_model(url: str, served: str | None, source: str) -> None:
    if served and Path(served).resolve() != Path(source).resolve():
        warnings.warn(
            f"{url} serves {served}, not {source}: the numbers are that model's", stacklevel=3
        )


ENGINES: dict[str, EngineChoice] = {
    "torch": EngineChoice(_torch_engine, needs_urls=False),
    "sglang": EngineChoice(_server_engine("sglang"), needs_urls=True),
    "vllm": EngineChoice(_server_engine("vllm"), needs_urls=True),
}


def check_engine_choice(settings: EvalSettings) -> EngineChoice:
    """The registered engine of ``settings.engine``, its URLs checked (before anything loads)."""
    choice = ENGINES.get(settings.engine)
    if choice is None:
        raise EvalSetupError(
            f"engine {settings.engine!r} is not one of {', '.join(sorted(ENGINES))}"
        )
    if choice.needs_urls and not settings.server_urls:
        raise EvalSetupError(f"engine {settings.engine} needs --server-url URL [URL ...]")
    if not choice.needs_urls and settings.server_urls:
        raise EvalSetupError(f"engine {settings.engine} runs in this process: drop --server-url")
    return choice


def build_engine(settings: EvalSettings, model: OpenedModel) -> BuiltEngine:
    return check_engine_choice(settings).build(settings, model)
