"""Rollout servers failing under the trainer: two CPU servers in their own processes behind a
``ServerPool``, driven by ``ServerRolloutEngine``.

- A server killed while a batch is in flight (its request already sent: the process is first
  stopped, so the request waits in its socket, then killed): the batch completes on the other
  server with every sample equal to a reference engine's; the next weight sync restarts the
  dead server and brings it to the current version, after which both serve.
- A server that stops answering is timed out and its requests go to the other.
- A server at another weight version is refused, never trained on.
"""

import os
import signal
import threading
import time

import pytest

from megatron_fork.rollout.server_engine import ServerRolloutEngine, StaleWeightsError
from megatron_fork.rollout.server_pool import ServerPool, cpu_server_command
from megatron_fork.rollout.torch_engine import TorchRolloutEngine
from megatron_fork.rollout.types import GenerationRequest, SamplingParams
from tests.support.tiny_qwen3 import tiny_qwen3_model


def _requests(n=12, tokens=24):
    return [
        GenerationRequest((1 + i % 5, 2, 3), SamplingParams(max_new_tokens=tokens, seed=i), f"r{i}")
        for i in range(n)
    ]


@pytest.fixture
def servers(tmp_path):
    tiny_qwen3_model(seed=0).save_pretrained(tmp_path / "hf")
    with ServerPool([cpu_server_command(str(tmp_path / "hf"))] * 2) as pool:
        yield pool


def _run_in_thread(function):
    box = {}
    thread = threading.Thread(target=lambda: box.update(result=function()), daemon=True)
    thread.start()
    return thread, box


def test_killed_server_mid_rollout_the_step_completes_and_it_comes_back(servers):
    engine = ServerRolloutEngine(servers.urls, servers, request_timeout_s=60)
    requests = _requests()
    expected = TorchRolloutEngine(tiny_qwen3_model(seed=0)).generate(requests)
    victim = servers.servers[0].process
    os.kill(victim.pid, signal.SIGSTOP)  # the request reaches its socket, unanswered
    thread, box = _run_in_thread(lambda: engine.generate(requests))
    time.sleep(0.5)
    victim.kill()  # mid-rollout: its connection is reset
    thread.join(timeout=120)
    assert box["result"] == expected  # every sample, as if nothing happened
    assert engine.counters["requests_retried"] >= len(requests) // 2

    trained = tiny_qwen3_model(seed=7)  # the next step's weights
    engine.update_weights(list(trained.state_dict().items()))
    engine.update_weights([], version=1)
    assert engine.counters["servers_restarted"] == 1
    assert [client.weight_version() for client in engine.clients] == [1, 1]
    reference = TorchRolloutEngine(trained)
    reference.update_weights((), version=1)
    for client in engine.clients:  # both serve the new weights
        assert client.generate(requests[:4]) == reference.generate(requests[:4])


def test_a_server_that_stops_answering_is_timed_out(servers):
    # 10 s: far above the healthy server's answer time (~0.1 s) even on a loaded machine.
    engine = ServerRolloutEngine(servers.urls, servers, request_timeout_s=10)
    os.kill(servers.servers[1].process.pid, signal.SIGSTOP)
    requests = _requests(n=6, tokens=8)
    expected = TorchRolloutEngine(tiny_qwen3_model(seed=0)).generate(requests)
    assert engine.generate(requests) == expected
    assert engine.counters["requests_retried"] == 3


def test_samples_at_another_weight_version_are_refused(servers):
    engine = ServerRolloutEngine(servers.urls, servers)
    engine.clients[1].call("/update_weight_version", {"new_version": 5})
    with pytest.raises(StaleWeightsError, match="weight version 5, the trainer synced 0"):
        engine.generate(_requests(n=4, tokens=2))
