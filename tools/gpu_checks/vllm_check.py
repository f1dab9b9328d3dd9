"""One vLLM engine on one GPU, started the way the Slurm engine task starts it, in steps:

1. a model folder with what an engine's folder holds, config.json and tokenizer files, no weights
   (a Qwen3 config with qwen3_8b's widths, ``KIT_LAYERS`` layers, ``KIT_VOCAB`` tokens, and the
   synthetic task's tokenizer);
2. ``recipes.engine_task.vllm_engine_config`` for ``qwen3_8b rollout.backend=vllm`` (the
   recipe's memory share, seed, dummy weights, ``VLLM_PYTHON``), then
   ``vllm_server_command`` and ``vllm_server_environment`` (dev mode, the image's NCCL through
   ``VLLM_NCCL_SO_PATH``); only the place differs: loopback, a free port, the first GPU, a
   context the kit model holds;
3. ``GET /health`` answers 200 before the deadline (the engine's exit fails the step with its
   log's last error line);
4. one sampled request through the trainer's own client (``rollout/vllm_client.py``) on
   ``/inference/v1/generate``: the tokens asked for, a finite log-prob each, weight version 0
   (vLLM's "default"), so the scale-out route and processed log-probs are both on.

The engine runs in a session of its own and is stopped in a ``finally`` (``engine.stop``)."""

import dataclasses
import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from tools.gpu_checks import engine as engines
from tools.gpu_checks.core import CheckContext, CheckFailed, CheckResult, Parts
from tools.gpu_checks.kit_layout import KIT_LAYERS, KIT_VOCAB
from tools.gpu_checks.runner import last_line

RECIPE = "qwen3_8b"
MAX_MODEL_LEN = 4096
"""The kit config's ``max_position_embeddings`` (vLLM refuses a longer context)."""
NEW_TOKENS = 16
STOP_MARGIN_S = 45.0


def write_model_folder(out: Path) -> Path:
    """config.json + tokenizer files (tokenizer.json, tokenizer_config.json, special tokens):
    what a converted checkpoint's ``hf/`` holds, weights aside."""
    from megatron_fork.atomic_files import directory_written_atomically
    from megatron_fork.data.tokenizer import build_and_save, load_tokenizer
    from megatron_fork.planning import QWEN3_SIZES
    from tools.gpu_checks.kit_model import kit_hf_config

    with directory_written_atomically(out) as tmp:
        kit_hf_config(QWEN3_SIZES[RECIPE], KIT_LAYERS, KIT_VOCAB).save_pretrained(tmp)
        load_tokenizer(build_and_save(tmp)).save_pretrained(tmp)
    return Path(out)


def vllm_launch(model_dir: Path, port: int, environ=os.environ) -> tuple[list[str], dict]:
    """The kit engine's command line and environment (the Slurm task's, moved to loopback)."""
    from megatron_fork.rollout.vllm_launch import vllm_server_command, vllm_server_environment
    from recipes.engine_task import vllm_engine_config
    from recipes.registry import build_recipe

    overrides = [f"base_model={model_dir}", "rollout.backend=vllm"]
    recipe = build_recipe(RECIPE, [*overrides, "launch.engines.tensor_parallel=1"])
    config = vllm_engine_config(recipe, 0, engines.LOOPBACK, environ)
    config = dataclasses.replace(config, port=port, max_model_len=MAX_MODEL_LEN)
    env = vllm_server_environment(environ, config)
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[0] if visible else "0"
    return vllm_server_command(config), env


def wait_for_health(url: str, process, log: Path, deadline: float, poll_s: float = 2.0) -> float:
    """Seconds until ``GET /health`` answered 200; CheckFailed if the engine exits first or
    the deadline passes."""
    start = time.monotonic()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise CheckFailed(f"engine exited ({process.returncode}): {last_line(log)}")
        try:
            with opener.open(url + "/health", timeout=10) as answer:
                if answer.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(poll_s)
    raise CheckFailed(f"no 200 from {url}/health in time (log: {log})")


def generate_one(url: str, api_key: str | None = None) -> dict:
    """One sampled request through the trainer's client; its figures (CheckFailed when the
    answer is not what the trainer needs)."""
    from megatron_fork.rollout.types import GenerationRequest, SamplingParams
    from megatron_fork.rollout.vllm_client import VllmClient

    sampling = SamplingParams(temperature=1.0, max_new_tokens=NEW_TOKENS, seed=1234)
    request = GenerationRequest(prompt_ids=(5, 6, 7, 8), sampling=sampling, request_id="kit-0")
    start = time.monotonic()
    (sample,) = VllmClient(url, timeout_s=120.0, api_key=api_key).generate([request])
    seconds = time.monotonic() - start
    logprobs = sample.output_logprobs
    if not sample.output_ids or len(logprobs) != len(sample.output_ids):
        raise CheckFailed(f"{len(sample.output_ids)} tokens, {len(logprobs)} log-probs")
    if not all(math.isfinite(v) and v <= 0.0 for v in logprobs):
        raise CheckFailed(f"log-probs not finite and <= 0: {logprobs[:4]}")
    if sample.weight_version != 0:
        raise CheckFailed(f"weight version {sample.weight_version} before any sync (expected 0)")
    return {"tokens": len(sample.output_ids), "generate_s": seconds, "first": logprobs[0]}


def check(ctx: CheckContext) -> CheckResult:
    parts, process = Parts(), None
    deadline = time.monotonic() + ctx.timeout_s - STOP_MARGIN_S
    model, log, port = ctx.work / "model", ctx.work / "engine.log", engines.free_port()
    url = f"http://{engines.LOOPBACK}:{port}"

    def start():
        nonlocal process
        command, env = vllm_launch(model, port)
        process = engines.start(command, env, log)
        return f"{command[0]} on port {port}, GPU {env['CUDA_VISIBLE_DEVICES']}", None

    def health():
        seconds = wait_for_health(url, process, log, deadline)
        parts.figures["ready_s"] = seconds
        return f"/health 200 after {seconds:.0f} s", None

    def generate():
        figures = generate_one(url, os.environ.get("VLLM_API_KEY"))
        parts.figures.update(figures)
        return f"{figures['tokens']} tokens in {figures['generate_s']:.1f} s, version 0", None

    try:
        parts.step(
            "model folder (config + tokenizer)", lambda: (str(write_model_folder(model)), None)
        )
        parts.step("vLLM engine started", start)
        parts.step("health", health)
        parts.step("generate via /inference/v1/generate", generate)
    finally:
        engines.stop(process)
    return parts.result("vLLM engine served one request through the trainer's client")
