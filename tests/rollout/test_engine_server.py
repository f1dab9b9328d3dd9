"""The CPU rollout server over real HTTP on loopback (in a thread of the test process): routes,
errors as sglang answers them, pause/abort around weight updates, flush only when idle, the
weight version, updates from disk."""

import time

import pytest
import torch

from megatron_fork.rollout.http_client import ServerError
from megatron_fork.rollout.types import GenerationRequest, SamplingParams
from tests.support.served_engine import served_engine
from tests.support.threads import Background
from tests.support.tiny_qwen3 import tiny_qwen3_model


@pytest.fixture
def served():
    with served_engine() as pair:
        yield pair


def _long_requests(n=8, tokens=400):
    return [
        GenerationRequest((1, 2, 3), SamplingParams(max_new_tokens=tokens, seed=i), f"r{i}")
        for i in range(n)
    ]


def _wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_generation_matches_the_engine_and_reports_its_version(served):
    server, client = served
    requests = _long_requests(n=3, tokens=5)
    assert client.generate(requests) == server.engine.generate(requests)
    client.call("/update_weight_version", {"new_version": "4"})
    assert client.weight_version() == 4
    assert {s.weight_version for s in client.generate(requests)} == {4}


def test_pause_aborts_running_generation_and_holds_new_calls(served):
    server, client = served
    running = Background(lambda: client.generate(_long_requests()))
    _wait_until(server._engine_lock.locked)
    with pytest.raises(ServerError) as busy:
        client.flush_cache()  # not idle: refused, as sglang does
    assert busy.value.status == 400
    client.pause("abort")  # returns once the running generation has ended
    assert {s.finish_reason.kind for s in running.result()} == {"abort"}
    client.flush_cache()  # idle now

    held = Background(lambda: client.generate(_long_requests(n=1, tokens=2)))
    time.sleep(0.3)
    assert held.is_alive(), "a generate call ran while generation was paused"
    client.resume()
    assert held.result()[0].finish_reason.kind == "length"


def test_bad_requests_get_sglangs_answers(served):
    _, client = served
    with pytest.raises(ServerError, match=r"404.*no route GET /nowhere"):
        client.call("/nowhere")
    with pytest.raises(ServerError, match=r"400.*unknown sampling_params keys"):
        client.call("/generate", {"input_ids": [[1]], "sampling_params": [{"bogus": 1}]})
    with pytest.raises(ServerError, match=r"400.*new_version must be a string"):
        client.call("/update_weight_version", {"new_version": 4})  # sglang's field is a str
    with pytest.raises(ServerError, match=r"400.*must be a JSON object"):
        client.call("/generate", [1, 2])
    with pytest.raises(ServerError, match=r"400.*pause mode 'sideways'"):
        client.call("/pause_generation", {"mode": "sideways"})
    with pytest.raises(ServerError, match=r"400.*no weight-update group"):
        client.call("/update_weights_from_distributed",
                    {"names": [], "dtypes": [], "shapes": [], "weight_version": "1"})  # fmt: skip


def test_update_from_disk_loads_the_folder_and_sets_the_version(served, tmp_path):
    server, client = served
    other = tiny_qwen3_model(seed=3)
    other.save_pretrained(tmp_path / "hf")
    answer = client.call("/update_weights_from_disk",
                         {"model_path": str(tmp_path / "hf"), "weight_version": "9"})  # fmt: skip
    assert answer["success"] and client.weight_version() == 9
    for name, tensor in other.state_dict().items():
        assert torch.equal(server.engine.model.state_dict()[name], tensor), name
    assert client.call("/model_info")["model_path"] == str(tmp_path / "hf")
