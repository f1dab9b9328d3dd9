"""Command line and environment of a vLLM rollout engine, from one frozen config: what a launcher
(the Slurm engine task, the bring-up kit) runs. Flags and variables are vLLM ``VLLM_VERSION``'s,
read from its source (../shared/VLLM_API.md, "Launch"):

- ``VLLM_SERVER_DEV_MODE=1``: the RL routes (``/pause``, ``/init_weight_transfer_engine``,
  ``/update_weights``, ``/weight_info``, ...) are registered only then.
- ``--weight-transfer-config '{"backend":"nccl"}'``: without it every weight-transfer call fails;
  ``--enable-scale-out`` registers the token-in/token-out ``/inference/v1/generate``;
  ``--logprobs-mode processed_logprobs``: the sampled token's log-prob after temperature and
  top-k/top-p (``vllm_protocol.py`` says how that relates to the trainer's).
- ``--gpu-memory-utilization`` is set: vLLM does not measure the weight-transfer buffers.
- ``--load-format dummy``: random weights, which the trainer's first sync replaces; the model
  folder needs only config.json and the tokenizer files. FP8 engines serve the folder
  ``fp8_engine_model`` writes (re-exported here), the same one sglang's FP8 engines read.
- ``VLLM_NCCL_SO_PATH``: the NCCL that vLLM's PyNccl loads, which is the library its
  weight-transfer communicator uses: the image's, the trainer's, since one NCCL group spans both.

The API key guards only ``/v1``, ``/v2``, ``/inference`` and ``/cohere``; every control route
(pause, weight updates, ``/collective_rpc``, sleep) is open to whoever reaches the port. So an
engine never listens on every interface: ``host`` must name one private interface.
"""

import ipaddress
import sys
from dataclasses import dataclass

from megatron_fork.rollout.sglang_launch import fp8_engine_model

VLLM_VERSION = "0.34.0"
"""The one vLLM release the project speaks (the Dockerfile installs it; tests hold it there)."""
WEIGHT_TRANSFER_CONFIG = '{"backend":"nccl"}'
NCCL_LIBRARY_VARIABLE = "VLLM_NCCL_SO_PATH"
SGLANG_NCCL_VARIABLE = "SGLANG_NCCL_LIBRARY"
"""The container names the same library under both (Dockerfile)."""
API_KEY_VARIABLE = "VLLM_API_KEY"
"""vLLM reads its key from here itself (the ``--api-key`` flag would put it in the process's
command line, readable by every user of the node)."""
WILDCARD_HOSTS = ("", "0", "*")

__all__ = [
    "VLLM_VERSION",
    "VllmEngineConfig",
    "fp8_engine_model",
    "vllm_server_command",
    "vllm_server_environment",
]


class PublicBindError(ValueError):
    """A vLLM engine was asked to listen on every interface."""


def check_private_host(host: str | None) -> str:
    """``host`` unless it means every interface (None, "", 0.0.0.0, ::), which is refused: vLLM's
    control routes take no API key."""
    text = (host or "").strip()
    try:
        wildcard = ipaddress.ip_address(text.strip("[]")).is_unspecified
    except ValueError:
        wildcard = text in WILDCARD_HOSTS
    if wildcard:
        raise PublicBindError(
            f"vLLM engine host {host!r} listens on every interface, but vLLM's control routes "
            "(/pause, /update_weights, /collective_rpc, /sleep) take no API key: bind one "
            "private interface instead: 127.0.0.1 on one machine; on a cluster the address of "
            "the cluster-internal interface (the Slurm engine task: ENGINE_BIND_INTERFACE=<name> "
            "or ENGINE_BIND_ADDRESS=<ip>; by default the node's resolved hostname)"
        )
    return text


@dataclass(frozen=True)
class VllmEngineConfig:
    model_path: str
    """A Hugging Face folder: config.json and tokenizer files; its weights are read unless
    ``dummy_weights`` (FP8: the folder ``fp8_engine_model`` writes)."""
    host: str = "127.0.0.1"
    """One private interface's address or name; never every interface (``check_private_host``)."""
    port: int = 30000
    tp_size: int = 1
    """GPUs per engine (``--tensor-parallel-size``); each one is a member of the weight group."""
    gpu_memory_utilization: float = 0.85
    """vLLM's share of each GPU (weights, activations, KV cache); what is left holds the
    weight-transfer buffers vLLM does not measure."""
    max_model_len: int | None = None
    """Longest prompt + response; None: the model config's."""
    dtype: str = "bfloat16"
    """Set, not "auto": with no weight files vLLM takes the dtype from config.json, else float32."""
    fp8: bool = False
    """``--quantization fp8`` on a folder whose config holds the blockwise ``quantization_config``
    (checkpoint FP8: vLLM's ``fp8`` no longer quantises online)."""
    dummy_weights: bool = True
    colocated: bool = False
    """Sharing GPUs with the trainer: ``--enable-sleep-mode`` (``/sleep``, ``/wake_up``)."""
    random_seed: int = 0
    """``--seed``, the engine's; each request brings its own sampling seed."""
    batch_invariant: bool = False
    """``VLLM_BATCH_INVARIANT=1``: outputs that do not depend on the batch, so a step's seeds
    replay it exactly (compute capability >= 9.0). Costs throughput (batch-invariant kernels,
    TF32 off, NCCL pinned to one channel and the Simple protocol) and, with an NCCL older than
    2.29.7, vLLM's NCCL_* pins also apply to the trainer's group: the trainer must then set the
    same NCCL_* variables or the group hangs."""
    api_key: str | None = None
    python: str = sys.executable
    """The interpreter with vLLM installed (the container's own environment: ``VLLM_PYTHON``)."""

    def __post_init__(self):
        check_private_host(self.host)
        if self.tp_size < 1:
            raise ValueError(f"vLLM tp_size must be >= 1, got {self.tp_size}")
        if not 0 < self.gpu_memory_utilization < 1:
            raise ValueError(
                f"gpu_memory_utilization in (0, 1), got {self.gpu_memory_utilization}: leave "
                "room for the weight-transfer buffers vLLM does not measure"
            )
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if not 0 <= self.random_seed < 2**32:
            raise ValueError(f"vLLM's --seed is in [0, 2**32), got {self.random_seed}")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def vllm_server_command(config: VllmEngineConfig) -> list[str]:
    """``vllm serve <model folder> ...`` run by ``config.python`` (the API key goes through the
    environment: ``vllm_server_environment``)."""
    command = [
        config.python, "-m", "vllm.entrypoints.cli.main", "serve", config.model_path,
        "--host", check_private_host(config.host), "--port", str(config.port),
        "--tensor-parallel-size", str(config.tp_size),
        "--gpu-memory-utilization", str(config.gpu_memory_utilization),
        "--dtype", config.dtype,
        "--seed", str(config.random_seed),
        "--weight-transfer-config", WEIGHT_TRANSFER_CONFIG,
        "--logprobs-mode", "processed_logprobs",
        "--enable-scale-out",
    ]  # fmt: skip
    flags = {
        "--max-model-len": None if config.max_model_len is None else str(config.max_model_len),
        "--quantization": "fp8" if config.fp8 else None,
        "--load-format": "dummy" if config.dummy_weights else None,
    }
    for flag, value in flags.items():
        if value is not None:
            command += [flag, value]
    if config.colocated:
        command.append("--enable-sleep-mode")
    return command


def vllm_server_environment(environ, config: VllmEngineConfig) -> dict[str, str]:
    """``environ`` plus what the engine needs: the RL routes (dev mode), the image's NCCL for
    PyNccl (``VLLM_NCCL_SO_PATH``, else the library ``SGLANG_NCCL_LIBRARY`` names: the container
    sets both to one file), batch invariance if asked, and the config's API key (none: a key in
    ``environ`` is removed, so the config alone decides)."""
    env = dict(environ)
    env["VLLM_SERVER_DEV_MODE"] = "1"
    library = env.get(NCCL_LIBRARY_VARIABLE) or env.get(SGLANG_NCCL_VARIABLE)
    if library:
        env[NCCL_LIBRARY_VARIABLE] = library
    if config.batch_invariant:
        env["VLLM_BATCH_INVARIANT"] = "1"
    else:
        env.pop("VLLM_BATCH_INVARIANT", None)
    if config.api_key:
        env[API_KEY_VARIABLE] = config.api_key
    else:
        env.pop(API_KEY_VARIABLE, None)
    return env
