"""Fixtures shared by the rollout tests that drive real CPU server processes."""

import pytest

from megatron_fork.rollout.server_kinds import SERVERS
from megatron_fork.rollout.server_pool import ServerPool, cpu_server_command
from tests.support.tiny_qwen3 import tiny_qwen3_model


@pytest.fixture(params=["sglang", "vllm"])
def servers(request, tmp_path):
    """Two CPU servers serving the seed-0 tiny Qwen3, speaking ``request.param``'s protocol
    (``pool.protocol``)."""
    tiny_qwen3_model(seed=0).save_pretrained(tmp_path / "hf")
    command = cpu_server_command(str(tmp_path / "hf"), protocol=request.param)
    with ServerPool([command] * 2, client=SERVERS[request.param].client) as pool:
        pool.protocol = request.param
        yield pool
