"""Command lines for sglang engines and its router, from one frozen config: what a launcher
(``ServerPool`` on a node, or the Slurm recipe) runs. Flags are sglang ``SGLANG_VERSION``'s
(``python -m sglang.launch_server --help``; ../shared/SGLANG_API.md).

Rollout engines start with ``--load-format dummy`` (random weights; the trainer's first sync
fills them) and ``--enable-deterministic-inference`` (sglang honours per-request
``sampling_seed`` only then, which replays of a step rely on). Colocated with the trainer they
need ``--enable-memory-saver`` to release and resume their memory around training.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from megatron_fork.atomic_files import directory_written_atomically
from megatron_fork.models.hf_directory import copy_hf_metadata
from megatron_fork.rollout.fp8 import QUANTIZATION_CONFIG


@dataclass(frozen=True)
class SglangEngineConfig:
    model_path: str
    """A Hugging Face folder (config, tokenizer); its weights are read unless ``dummy_weights``."""
    port: int = 30000
    host: str = "127.0.0.1"
    tp_size: int = 1
    """GPUs per engine (sglang's tensor parallelism)."""
    base_gpu_id: int = 0
    mem_fraction_static: float = 0.8
    """Share of GPU memory for weights + KV cache (lower it when colocated)."""
    dtype: str = "bfloat16"
    fp8: bool = False
    """``--quantization fp8``: serve FP8 weights (the sync then sends blockwise e4m3)."""
    dummy_weights: bool = True
    deterministic: bool = True
    colocated: bool = False
    """Sharing GPUs with the trainer: ``--enable-memory-saver`` (release/resume memory)."""
    random_seed: int = 0
    weight_version: int = 0
    api_key: str | None = None
    python: str = sys.executable
    """The interpreter with sglang installed (the container keeps sglang, which pins its own
    torch, in a virtual environment of its own: ``SGLANG_PYTHON``)."""

    def __post_init__(self):
        if self.tp_size < 1:
            raise ValueError(f"sglang tp_size must be >= 1, got {self.tp_size}")
        if not 0 < self.mem_fraction_static < 1:
            raise ValueError(f"mem_fraction_static in (0, 1), got {self.mem_fraction_static}")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def sglang_server_command(config: SglangEngineConfig) -> list[str]:
    command = [
        config.python, "-m", "sglang.launch_server",
        "--model-path", config.model_path,
        "--host", config.host, "--port", str(config.port),
        "--tp-size", str(config.tp_size), "--base-gpu-id", str(config.base_gpu_id),
        "--mem-fraction-static", str(config.mem_fraction_static),
        "--dtype", config.dtype,
        "--random-seed", str(config.random_seed),
        "--weight-version", str(config.weight_version),
        "--skip-tokenizer-init",
    ]  # fmt: skip
    flags = {
        "--quantization": "fp8" if config.fp8 else None,
        "--load-format": "dummy" if config.dummy_weights else None,
        "--api-key": config.api_key,
    }
    for flag, value in flags.items():
        if value is not None:
            command += [flag, value]
    if config.deterministic:
        command.append("--enable-deterministic-inference")
    if config.colocated:
        command.append("--enable-memory-saver")
    return command


def sglang_router_command(worker_urls: list[str], port: int = 30100, policy: str = "round_robin"):
    """sglang's router over the engines (it forwards generate and health; weight updates go to
    every engine directly)."""
    return [
        sys.executable, "-m", "sglang_router.launch_router",
        "--worker-urls", *worker_urls, "--policy", policy, "--port", str(port),
    ]  # fmt: skip


def fp8_engine_model(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """A model folder for an FP8 engine: ``hf_dir``'s config (with the blockwise FP8
    ``quantization_config``) and tokenizer files; the engine starts with dummy weights, so no
    weights are needed. Written whole or not at all."""
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    config["quantization_config"] = QUANTIZATION_CONFIG
    with directory_written_atomically(out_dir) as tmp:
        copy_hf_metadata(hf_dir, tmp)
        (Path(tmp) / "config.json").write_text(json.dumps(config, indent=2))
    return Path(out_dir)
