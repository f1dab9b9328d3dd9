"""The CPU rollout server speaking vLLM 0.34.0 (``--protocol vllm``): its routes, bodies and
status codes over real HTTP on loopback, pause modes, weight-update sessions, and weight updates
over a real gloo group from a trainer side built only from ``vllm_protocol`` + ``weight_group``.
What each answer must be was read from vLLM's source (see ``server/vllm_*.py``)."""

import math
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
import torch

from megatron_fork.rollout.http_client import ServerClient, ServerError
from megatron_fork.rollout.sampling import next_token
from megatron_fork.rollout.server.engine_server import EngineServer
from megatron_fork.rollout.server.http_app import make_http_server
from megatron_fork.rollout.server.vllm_routes import VllmServer, vllm_error
from megatron_fork.rollout.torch_engine import TorchRolloutEngine
from megatron_fork.rollout.types import GenerationRequest, SamplingParams
from megatron_fork.rollout.vllm_protocol import (
    GENERATE_PATH,
    TRANSFER_GROUP_NAME_KEY,
    TRANSFER_STORE_PREFIX,
    InitInfo,
    UpdateInfo,
    generate_body,
    packed_chunks,
    sample_from_response,
)
from megatron_fork.rollout.weight_group import dtype_name, join_weight_group, master_store
from tests.rollout.test_engine_server import _wait_until
from tests.support.threads import Background
from tests.support.tiny_qwen3 import tiny_qwen3_model

PAUSED = {
    "message": "Generation is paused. Please retry after it resumes.",
    "type": "ServiceUnavailableError",
    "param": None,
    "code": 503,
}


def test_processed_logprobs_renormalise_over_the_nucleus():
    """Hand-worked: p = (0.5, 0.3, 0.2); top_p 0.6 keeps tokens 0 and 1 (mass before each:
    0, 0.5 < 0.6; token 2 has 0.8 before it), so the sampled token's processed log-prob is
    log(p / 0.8); with top_p 1 nothing is cut and both modes give log p."""
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    for seed in range(6):
        nucleus = SamplingParams(top_p=0.6, seed=seed)
        token, raw = next_token(logits, nucleus, torch.Generator().manual_seed(seed))
        same, processed = next_token(logits, nucleus, torch.Generator().manual_seed(seed), True)
        assert same == token and token in (0, 1)
        assert raw == pytest.approx(math.log((0.5, 0.3)[token]), abs=1e-6)
        assert processed == pytest.approx(math.log((0.5, 0.3)[token] / 0.8), abs=1e-6)
        full = SamplingParams(top_p=1.0, seed=seed)
        _, untruncated = next_token(logits, full, torch.Generator().manual_seed(seed), True)
        assert untruncated == next_token(logits, full, torch.Generator().manual_seed(seed))[1]


@contextmanager
def vllm_served(eos_token_id=None):
    """(core EngineServer, raw client, VllmServer) of an in-process server in vLLM mode."""
    engine = TorchRolloutEngine(tiny_qwen3_model(seed=0), processed_logprobs=True)
    core = EngineServer(engine, "tiny")
    vllm = VllmServer(core, eos_token_id)
    httpd = make_http_server(core, "127.0.0.1", 0, vllm.routes(), vllm_error)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    host, port = httpd.server_address[:2]
    try:
        yield core, ServerClient(f"http://{host}:{port}", timeout_s=60), vllm
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def served():
    with vllm_served() as triple:
        yield triple


def _request(rid="r0", tokens=6, seed=1, stop=(), top_p=0.9):
    params = SamplingParams(max_new_tokens=tokens, seed=seed, stop_token_ids=stop, top_p=top_p)
    return GenerationRequest((1, 2, 3), params, rid)


def _generate(client, request):
    return sample_from_response(client.call(GENERATE_PATH, generate_body(request)), request)


def _error(client, path, body=None):
    with pytest.raises(ServerError) as caught:
        client.call(path, body)
    detail = str(caught.value).split(": ", 2)[-1].split(" -> ", 1)[-1]
    return caught.value.status, detail


def test_read_routes_answer_as_vllm(served):
    _, client, _ = served
    assert client.call("/health") == ""  # 200, empty body: generates nothing
    assert client.call("/weight_info") == {"weight_version": "default"}
    assert client.call("/get_world_size?include_dp=true") == {"world_size": 1}
    assert client.call("/is_paused") == {"is_paused": False}
    assert client.call("/update_weight_version", {"new_version": "3"}) == {
        "success": True,
        "new_version": "3",
    }
    assert client.call("/weight_info") == {"weight_version": "3"}
    status, detail = _error(client, "/update_weight_version", {"new_version": 3})
    assert status == 400 and '"param": "body.new_version"' in detail


def test_generation_seeds_logprobs_and_version_spans(served):
    core, client, _ = served
    answer = client.call(GENERATE_PATH, generate_body(_request()))
    (choice,) = answer["choices"]
    assert choice["weight_versions"] == [{"version": "default", "start": 0, "end": 6}]
    assert choice["finish_reason"] == "length" and choice["stop_reason"] is None
    reference = TorchRolloutEngine(tiny_qwen3_model(seed=0), processed_logprobs=True)
    (expected,) = reference.generate([_request()])
    sample = sample_from_response(answer, _request())
    assert sample.output_ids == expected.output_ids
    assert sample.output_logprobs == pytest.approx(expected.output_logprobs, abs=1e-6)
    assert _generate(client, _request()) == sample  # the seed reproduces
    assert _generate(client, _request(seed=2)).output_ids != sample.output_ids


def test_stop_ids_are_kept_with_their_stop_reason():
    greedy = dict(max_new_tokens=8, temperature=0.0, seed=0)
    probe = GenerationRequest((1, 2, 3), SamplingParams(**greedy), "p")
    with vllm_served() as (_, client, _):
        tokens = _generate(client, probe).output_ids
    stop = tokens[2]
    cut = tokens.index(stop) + 1
    request = GenerationRequest((1, 2, 3), SamplingParams(**greedy, stop_token_ids=(stop,)), "s")
    with vllm_served() as (_, client, _):
        (choice,) = client.call(GENERATE_PATH, generate_body(request))["choices"]
    assert choice["token_ids"] == list(tokens[:cut])
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", stop)
    with vllm_served(eos_token_id=stop) as (_, client, _):  # the model's EOS: stop_reason None
        (choice,) = client.call(GENERATE_PATH, generate_body(request))["choices"]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", None)
    assert choice["token_ids"] == list(tokens[:cut])


def test_pause_abort_ends_running_requests_and_refuses_new_ones(served):
    _, client, vllm = served
    running = Background(lambda: client.call(GENERATE_PATH, generate_body(_request(tokens=400))))
    _wait_until(lambda: vllm.generation._stepping)
    assert client.call("/pause?mode=abort&clear_cache=true", {}) == {"status": "paused"}
    (choice,) = running.result()["choices"]
    assert choice["finish_reason"] == "abort" and 0 < len(choice["token_ids"]) < 400
    assert client.call("/is_paused") == {"is_paused": True}
    status, detail = _error(client, GENERATE_PATH, generate_body(_request()))
    assert (status, detail) == (503, '{"error": ' + _json(PAUSED) + "}")
    assert client.call("/resume", {}) == {"status": "resumed"}
    assert _generate(client, _request()).finish_reason.kind == "length"
    assert _error(client, "/pause?mode=sideways", {})[0] == 400


def _json(value) -> str:
    import json

    return json.dumps(value)


def test_pause_wait_drains_and_keep_holds(served):
    core, client, _ = served
    running = Background(lambda: _generate(client, _request(tokens=60)))
    _wait_until(core.engine_lock.locked)
    client.call("/pause?mode=wait", {})  # returns once the running request has ended
    assert running.result(timeout=1).finish_reason.kind == "length"
    assert _error(client, GENERATE_PATH, generate_body(_request()))[0] == 503
    client.call("/resume", {})

    client.call("/pause?mode=keep", {})
    held = Background(lambda: _generate(client, _request(rid="held")))
    time.sleep(0.3)
    assert held.is_alive(), "a request ran while paused in keep mode"
    client.call("/update_weight_version", {"new_version": "2"})
    client.call("/resume", {})
    sample = held.result()
    assert sample.finish_reason.kind == "length" and sample.weight_version == 2


def test_keep_freezes_mid_generation_and_the_version_spans_split(served):
    core, client, vllm = served
    body = generate_body(_request(tokens=400))
    running = Background(lambda: client.call(GENERATE_PATH, body))
    _wait_until(lambda: vllm.generation._stepping)  # at least one token sampled
    client.call("/pause?mode=keep", {})
    assert not core.engine_lock.locked()  # frozen between steps, the engine free
    client.call("/update_weight_version", {"new_version": "7"})
    client.call("/resume", {})
    (choice,) = running.result()["choices"]
    first, second = choice["weight_versions"]
    assert (first["version"], first["start"], second["version"], second["end"]) == (
        "default", 0, "7", len(choice["token_ids"]),
    )  # fmt: skip
    assert first["end"] == second["start"] > 0


def test_weight_update_session_rules(served):
    _, client, _ = served
    rules = [
        ("/update_weights", {"update_info": {"names": []}}, "must be called before update_w"),
        ("/finish_weight_update", {}, "without a matching start_weight_update"),
        ("/start_weight_update", {}, None),
        ("/start_weight_update", {}, "already active"),
        ("/shutdown_weight_transfer_engine", {}, "during a weight update"),
        ("/update_weights", {"update_info": {"names": []}}, "not initialized"),  # ends it
        ("/finish_weight_update", {}, "without a matching start_weight_update"),
        ("/shutdown_weight_transfer_engine", {}, None),
    ]
    for path, body, refusal in rules:
        if refusal is None:
            client.call(path, body)
            continue
        status, detail = _error(client, path, body)
        assert status == 500 and refusal in detail, (path, detail)
        assert '"type": "InternalServerError"' in detail
        assert "Call to collective_rpc method failed" in detail
    uid = {"init_info": {"rank_offset": 1, "world_size": 2, "nccl_unique_id_b64": "AA=="}}
    status, detail = _error(client, "/init_weight_transfer_engine", uid)
    assert status == 500 and "over gloo" in detail
    assert _error(client, "/update_weights", {})[0] == 400  # update_info is required


@contextmanager
def server_process(model_dir):
    command = [sys.executable, "-m", "megatron_fork.rollout.server", "--model-path",
               str(model_dir), "--protocol", "vllm", "--load-format", "dummy"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "serving on" in line, line
        yield ServerClient(line.split()[-1], timeout_s=120)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _sync(client, weights, version, packed_bytes=None):
    """The trainer's side of one weight sync, per tensor or packed."""
    store = master_store("127.0.0.1", 2, timeout=timedelta(seconds=60))
    name = f"trainer_{version}"
    store.set(TRANSFER_GROUP_NAME_KEY, name)
    packing = {"packed": packed_bytes is not None}
    if packed_bytes is not None:
        packing["packed_buffer_size_bytes"] = packed_bytes
    info = InitInfo(1, 2, master_address="127.0.0.1", master_port=store.port, **packing)
    init = Background(lambda: client.call("/init_weight_transfer_engine", info.body()))
    group = join_weight_group(store, 0, 2, name, timeout=timedelta(seconds=60),
                              store_prefix=TRANSFER_STORE_PREFIX)  # fmt: skip
    init.result()
    client.call("/pause?mode=abort", {})
    client.call("/start_weight_update", {})
    named = list(weights.items())
    update = UpdateInfo(tuple(n for n, _ in named), tuple(dtype_name(t.dtype) for _, t in named),
                        tuple(tuple(t.shape) for _, t in named))  # fmt: skip
    sent = Background(lambda: client.call("/update_weights", update.body()))
    if packed_bytes is None:
        group.broadcast([t for _, t in named])
    else:
        sizes = [t.numel() * t.element_size() for _, t in named]
        chunks = packed_chunks(sizes, packed_bytes)
        assert len(chunks) > 1
        group.broadcast([torch.cat([named[i][1].reshape(-1).view(torch.uint8) for i in c])
                         for c in chunks])  # fmt: skip
    sent.result()
    client.call("/finish_weight_update", {"weight_version": str(version)})
    client.call("/resume", {})
    client.call("/shutdown_weight_transfer_engine", {})
    group.destroy()


@pytest.mark.parametrize("packed_bytes", [None, 4096])
def test_weight_update_over_gloo_changes_generations_and_versions(tmp_path, packed_bytes):
    tiny_qwen3_model(seed=0).save_pretrained(tmp_path)
    request = _request(tokens=8)
    with server_process(tmp_path) as client:
        for version, seed in ((5, 3), (6, 4)):
            model = tiny_qwen3_model(seed=seed)
            _sync(client, dict(model.state_dict()), version, packed_bytes)
            assert client.call("/weight_info") == {"weight_version": str(version)}
            answer = client.call(GENERATE_PATH, generate_body(request))
            assert answer["choices"][0]["weight_versions"][0]["version"] == str(version)
            engine = TorchRolloutEngine(model, processed_logprobs=True)
            (expected,) = engine.generate([request])
            sample = sample_from_response(answer, request)
            assert sample.output_ids == expected.output_ids and sample.weight_version == version
            assert sample.output_logprobs == pytest.approx(expected.output_logprobs, abs=1e-5)
