"""Colocated engines handing their memory back and forth: two CPU servers in their own processes
(``--protocol sglang`` and ``vllm``, every test on both), driven by ``ServerRolloutEngine``.

- Release, then a weight sync: the sync resumes the weights' memory before its buckets and the
  KV cache before generation continues; the engines then serve the synced weights exactly.
- Released, an engine runs nothing: vLLM refuses new requests with its 503 "Generation is
  paused" (asleep = paused), sglang holds them on the pause; an engine made to continue while
  released refuses to generate (a GPU engine would read freed memory). Resumed without a sync,
  the weights hold no values (they come back only with the sync).
- Resuming what is not released ends an sglang server, as its scheduler's KeyError does.
- An engine that dies while released: the next sync restarts it and brings it to the new
  weights; the step completes on both servers.
- An engine that may hold its memory (its release failed, injected; or it was taken as down)
  is stopped by its pool, restarted and synced by the next sync. At fixed URLs a down engine
  is released and resumed with the others; one whose release or resume fails stops the run,
  named.
- The record a trainer keeps: each release or resume on disk as in doubt before the call and
  done after it. A vLLM engine left asleep is woken by the start-up wait; an sglang one from
  the record, unless a kill left it in doubt: then the start-up names it.
"""

import pytest

from megatron_fork.rollout.http_client import ServerError
from megatron_fork.rollout.released_memory import (
    PARTS,
    EngineMemory,
    EngineStateUnknown,
    ReleasedRecord,
    wake_released,
)
from megatron_fork.rollout.server_engine import DOWN, ServerRolloutEngine
from megatron_fork.rollout.server_kinds import SERVERS
from megatron_fork.rollout.server_pool import wait_until_healthy
from megatron_fork.rollout.torch_engine import TorchRolloutEngine
from megatron_fork.rollout.types import GenerationRequest, SamplingParams
from tests.support.tiny_qwen3 import tiny_qwen3_model


def _requests(n=4, tokens=6):
    return [
        GenerationRequest((1 + i % 5, 2, 3), SamplingParams(max_new_tokens=tokens, seed=i), f"c{i}")
        for i in range(n)
    ]


def _engine(servers) -> ServerRolloutEngine:
    return ServerRolloutEngine(servers.urls, servers, 60.0, protocol=servers.protocol)


def _sync(engine, model, version) -> None:
    engine.update_weights(list(model.state_dict().items()))
    engine.update_weights([], version=version)


def _reference(seed, version, requests):
    reference = TorchRolloutEngine(tiny_qwen3_model(seed=seed))
    reference.update_weights((), version=version)
    return reference.generate(requests)


def _same(got, expected) -> None:
    for a, b in zip(got, expected, strict=True):
        assert (a.output_ids, a.finish_reason, a.weight_version) == (
            b.output_ids, b.finish_reason, b.weight_version,
        )  # fmt: skip


def _generate_raw(client, timeout_s, rid):
    """One request straight to the server (no retry), as ``client`` speaks."""
    fast = type(client)(client.url, timeout_s)
    request = GenerationRequest((1, 2, 3), SamplingParams(max_new_tokens=4, seed=0), rid)
    return fast.generate([request])


def test_release_then_sync_serves_the_synced_weights(servers):
    engine = _engine(servers)
    requests = _requests()
    _same(engine.generate(requests), _reference(0, 0, requests))
    engine.release_memory()
    if servers.protocol == "vllm":
        assert all(client.released() for client in engine.clients)
    _sync(engine, tiny_qwen3_model(seed=7), 1)
    _same(engine.generate(requests), _reference(7, 1, requests))
    assert engine.counters == {
        "requests_retried": 0, "servers_restarted": 0, "memory_releases": 1,
    }  # fmt: skip


def test_a_released_engine_generates_nothing(servers):
    engine = _engine(servers)
    engine.release_memory()
    client = engine.clients[0]
    if servers.protocol == "vllm":  # asleep is paused: a new request gets 503, sent back aborted
        (sample,) = _generate_raw(client, 10.0, "a")
        assert sample.finish_reason.kind == "abort" and sample.output_ids == ()
        client.call("/resume", {})  # the scheduler made to run on freed memory
    else:  # paused: the request waits on the pause
        with pytest.raises(ServerError, match="no answer"):
            _generate_raw(client, 2.0, "b")
        client.resume()
    with pytest.raises(ServerError, match="released") as refused:
        _generate_raw(client, 10.0, "c")
    assert refused.value.status == 500


def test_resumed_without_a_sync_the_weights_hold_no_values(servers):
    engine = _engine(servers)
    requests = _requests()
    engine.release_memory()
    for part in ("weights", "kv_cache"):
        engine.resume_memory(part)
    for client in engine.clients:
        client.resume()
    got = engine.generate(requests)
    assert [s.output_ids for s in got] != [s.output_ids for s in _reference(0, 0, requests)]


def test_resuming_what_is_not_released_ends_an_sglang_server(servers):
    client = _engine(servers).clients[0]
    if servers.protocol == "vllm":  # vLLM logs a warning and wakes nothing
        assert client.call("/wake_up?tags=weights", {}) == {"status": "awake", "tags": ["weights"]}
        return
    with pytest.raises(ServerError, match="no answer"):
        client.resume_memory("weights")
    servers.servers[0].process.wait(timeout=30)
    assert not servers.alive(0)


def test_an_engine_that_dies_while_released_is_restarted_by_the_next_sync(servers):
    engine = _engine(servers)
    engine.release_memory()
    servers.servers[0].process.kill()  # during training
    servers.servers[0].process.wait()
    _sync(engine, tiny_qwen3_model(seed=3), 1)
    assert engine.counters["servers_restarted"] == 1
    requests = _requests()
    expected = _reference(3, 1, requests)
    for client in engine.clients:  # both serve the synced weights
        _same(client.generate(requests), expected)


class _Watched:
    """A real client whose memory calls first note what the record says at that moment (what
    a trainer killed during the call leaves on disk)."""

    def __init__(self, client, record: ReleasedRecord, seen: list):
        self.client, self.record, self.seen = client, record, seen

    def __getattr__(self, name):
        return getattr(self.client, name)

    def release_memory(self):
        self.seen.append(self.record.read())
        self.client.release_memory()

    def resume_memory(self, part):
        self.seen.append(self.record.read())
        self.client.resume_memory(part)


def test_a_kill_leaves_a_record_that_wakes_the_engines_or_names_those_in_doubt(servers, tmp_path):
    """Each release or resume is on disk as in doubt before it reaches its engine and as done
    after. At start-up, vLLM engines are woken by the start-up wait (they report their
    sleep); sglang ones from the record, unless a kill left one in doubt: then the start-up
    names it and touches nothing."""
    engine, record, seen = _engine(servers), ReleasedRecord(tmp_path / "released.json"), []
    engine.released_record = record
    engine.clients = [_Watched(client, record, seen) for client in engine.clients]
    urls, everything = servers.urls, set(PARTS)
    engine.release_memory()
    assert seen == [
        {urls[0]: EngineMemory(set(), everything), urls[1]: EngineMemory()},
        {urls[0]: EngineMemory(everything), urls[1]: EngineMemory(set(), everything)},
    ]
    assert record.read() == {url: EngineMemory(everything) for url in urls}
    engine.resume_memory("weights")  # as a sync begins
    assert seen[2][urls[0]] == EngineMemory({"kv_cache"}, {"weights"})
    assert record.read() == {url: EngineMemory({"kv_cache"}) for url in urls}
    engine.release_memory()  # after a sync that failed half-way: never a part released twice
    assert seen[4:6] == [
        {urls[0]: EngineMemory(set(), {"kv_cache"}), urls[1]: EngineMemory({"kv_cache"})},
        {urls[0]: EngineMemory(set(), everything), urls[1]: EngineMemory({"kv_cache"})},
    ]
    assert record.read() == {url: EngineMemory(everything) for url in urls}
    client_class = SERVERS[servers.protocol].client
    clients = [client_class(url, 30.0) for url in urls]
    record.write(seen[0])  # killed during the first release call
    if servers.protocol == "vllm":
        wake_released(record, clients)  # not vLLM's to wake
        assert record.read() == {}
        wait_until_healthy(urls, 60.0, poll_s=0.1, client=client_class)
        assert not any(client.released() for client in clients)
    else:
        with pytest.raises(EngineStateUnknown) as unknown:
            wake_released(record, clients)
        assert urls[0] in str(unknown.value) and urls[1] not in str(unknown.value)
        assert record.read() == seen[0]  # kept until the engine is restarted
        record.write({url: EngineMemory(everything) for url in urls})  # released, for sure
        watched, seen[:] = [_Watched(client, record, seen) for client in clients], []
        wake_released(record, watched)  # each resume on record in two phases too
        assert seen[0][urls[0]] == EngineMemory({"kv_cache"}, {"weights"})
        assert record.read() == {}
    fresh = ServerRolloutEngine(urls, None, 60.0, protocol=servers.protocol)
    _sync(fresh, tiny_qwen3_model(seed=5), 1)  # the first sync of the restarted trainer
    requests = _requests()
    _same(fresh.generate(requests), _reference(5, 1, requests))


class _FailsToRelease:
    """A real client whose release fails (injected: a CPU engine cannot be made to fail one
    while it keeps running, as a GPU engine out of memory can)."""

    def __init__(self, client):
        self.client = client

    def __getattr__(self, name):
        return getattr(self.client, name)

    def release_memory(self):
        raise ServerError(self.client.url, "release_memory_occupation failed", 500)


def test_a_pool_stops_an_engine_that_may_hold_its_memory_before_the_trainer_trains(servers):
    """An engine whose release fails, or that was taken as down (a generation timed out on
    it): its pool stops it, the next sync restarts it and brings it to the new weights."""
    engine = _engine(servers)
    engine.clients[0] = _FailsToRelease(engine.clients[0])
    engine._state[1] = DOWN  # as a timed-out generation leaves it: alive, memory held
    engine.release_memory()
    assert not servers.alive(0) and not servers.alive(1)
    _sync(engine, tiny_qwen3_model(seed=3), 1)
    assert engine.counters["servers_restarted"] == 2
    requests = _requests()
    for client in engine.clients:
        _same(client.generate(requests), _reference(3, 1, requests))


def test_engines_at_fixed_urls_hand_over_when_down_and_name_themselves_when_they_fail(servers):
    """No pool to stop them: a down engine that answers is released and resumed with the
    others (and serves again after the sync); one whose release or resume fails stops the run,
    named (buckets into released memory, or generating on it, would end it)."""
    urls, requests = servers.urls, _requests()
    fixed = ServerRolloutEngine(urls, None, 60.0, protocol=servers.protocol)
    fixed._state[1] = DOWN  # as a timed-out generation leaves it: alive, memory held
    fixed.release_memory()
    if servers.protocol == "vllm":  # sglang says nowhere
        assert all(client.released() for client in fixed.clients)
    _sync(fixed, tiny_qwen3_model(seed=3), 1)
    for client in fixed.clients:
        _same(client.generate(requests), _reference(3, 1, requests))
    fixed.clients[0] = _FailsToRelease(fixed.clients[0])
    with pytest.raises(RuntimeError, match=f"engine at {urls[0]} did not release"):
        fixed.release_memory()  # the injected failure reached no engine: both resident
    with pytest.raises(RuntimeError, match=f"engine at {urls[0]} did not release.*in doubt"):
        fixed.release_memory()  # in doubt for this trainer: never released again
    restarted = ServerRolloutEngine(urls, None, 60.0, protocol=servers.protocol, version=1)
    restarted.release_memory()
    servers.servers[1].process.kill()  # dies while released
    servers.servers[1].process.wait()
    with pytest.raises(RuntimeError, match=f"{urls[1]} did not resume their weights"):
        _sync(restarted, tiny_qwen3_model(seed=4), 2)
