"""The engines an evaluation can sample with, chosen by name from ``ENGINES``.

Each entry builds a ``rollout.types.RolloutEngine`` (only ``generate`` is used) from the
settings and the opened model, and describes it for the summary:

- ``torch``: the trainer's in-process engine (``TorchRolloutEngine``) holding the model's
  weights: a Hugging Face folder is read directly; a Megatron checkpoint is loaded into
  Megatron (one process, gloo) and synced through the trainer's one mapping, as the analysis
  tools do (``analysis.model_source``).
- ``sglang``: servers that speak sglang's protocol at ``--server-url`` (sglang, or this
  project's CPU rollout server), through the trainer's client (``ServerRolloutEngine``: requests
  spread over servers, a dead server's requests go to the others). The servers serve the model
  themselves (their ``--model-path``); their ``/model_info`` is recorded in the summary and a
  different model path is warned about.

A vLLM engine (issue 17, point 1) plugs in by one more entry, e.g. ``"vllm":
EngineChoice(_vllm_engine, needs_urls=True)`` whose builder returns the vLLM client engine over
the URLs; ``--engine`` lists whatever is registered.
"""

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_fork.eval.model import OpenedModel
from megatron_fork.eval.settings import EvalSettings, EvalSetupError
from megatron_fork.rollout.http_client import ServerClient, ServerError
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


def _server_version(client: ServerClient) -> tuple[int, dict]:
    try:
        info = client.call("/model_info", timeout_s=30.0)
    except ServerError as error:
        hint = "set SGLANG_API_KEY to the servers' key" if "401" in str(error) else "start it"
        raise EvalSetupError(
            f"server {client.url} does not answer ({error}): {hint}, or fix --server-url"
        ) from None
    try:
        return int(info["weight_version"]), info
    except (KeyError, TypeError, ValueError):
        raise EvalSetupError(
            f"server {client.url} reports weight_version {info.get('weight_version')!r}; the "
            "trainer's client needs an integer version: start sglang with --weight-version 0"
        ) from None


def _sglang_engine(settings: EvalSettings, model: OpenedModel) -> BuiltEngine:
    from megatron_fork.rollout.server_engine import ServerRolloutEngine

    api_key = os.environ.get("SGLANG_API_KEY")  # the recipes' servers require it (controller.py)
    clients = [
        ServerClient(url, settings.request_timeout_s, api_key) for url in settings.server_urls
    ]
    seen = [_server_version(client) for client in clients]
    versions = {version for version, _ in seen}
    if len(versions) > 1:
        listing = ", ".join(f"{c.url}: {v}" for c, (v, _) in zip(clients, seen, strict=True))
        raise EvalSetupError(f"the servers hold different weight versions ({listing})")
    for client, (_, info) in zip(clients, seen, strict=True):
        served = info.get("model_path")
        if served and Path(served).resolve() != Path(model.source).resolve():
            warnings.warn(
                f"{client.url} serves {served}, not {model.source}: the numbers are that model's",
                stacklevel=2,
            )
    engine = ServerRolloutEngine(
        [c.url for c in clients],
        None,
        settings.request_timeout_s,
        version=versions.pop(),
        api_key=api_key,
    )
    description = {"name": settings.engine, "servers": [info for _, info in seen]}
    return BuiltEngine(engine, description, engine.close)


ENGINES: dict[str, EngineChoice] = {
    "torch": EngineChoice(_torch_engine, needs_urls=False),
    "sglang": EngineChoice(_sglang_engine, needs_urls=True),
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
