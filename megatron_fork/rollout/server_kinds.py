"""What rollout servers speak (``rollout.backend``): for each kind, its client class and its
weight routes (``server_sync.SglangServers``, ``vllm_sync.VllmServers``), and the environment
variable that holds the API key its servers require (each engine reads the same one)."""

from megatron_fork.rollout.server_sync import SglangServers
from megatron_fork.rollout.vllm_sync import VllmServers

SERVERS = {"sglang": SglangServers(), "vllm": VllmServers()}
API_KEY_VARIABLES = {"sglang": "SGLANG_API_KEY", "vllm": "VLLM_API_KEY"}
