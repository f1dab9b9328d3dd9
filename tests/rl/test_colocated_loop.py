"""``rollout.placement=colocated`` through the RL loop, with two CPU rollout servers speaking
sglang's protocol or vLLM's (every test on both):

- Every server call of a 2-step run, in order, reduced to the memory hand-over: the engines are
  released right after start-up (before the trainer's model exists), and every step generates,
  releases, resumes the weights, receives them, resumes the KV cache, continues; never a
  generation while released. The run's metrics are the in-process engine's run's (same seeds),
  as a disaggregated run's are; the trainer's offload is counted (a no-op on CPU).
- A run killed after a checkpoint, its engines (at ``rollout.server_urls``) left released as
  a kill during training leaves them: the restarted run wakes them and logs the metrics of the
  uninterrupted run.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_fork.rl.colocation import wake_engines_left_released
from megatron_fork.rl.metrics_log import read_metrics
from megatron_fork.rl.overrides import apply_overrides
from megatron_fork.rollout.http_client import ServerError
from megatron_fork.rollout.released_memory import PARTS, EngineMemory, ReleasedRecord
from megatron_fork.rollout.server_kinds import SERVERS
from megatron_fork.rollout.server_pool import ServerPool, cpu_server_command
from tests.support.distributed import run_distributed
from tests.support.tiny_run import comparable, rl_config, write_config

STEPS = 2
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
EVENTS = {  # (path prefix, tags) -> event
    ("/generate", None): "G", ("/inference/v1/generate", None): "G",
    ("/release_memory_occupation", None): "R", ("/sleep", None): "R",
    ("/resume_memory_occupation", ("weights",)): "W", ("/wake_up?tags=weights", None): "W",
    ("/resume_memory_occupation", ("kv_cache", "cuda_graph")): "K",
    ("/wake_up?tags=kv_cache", None): "K",
    ("/update_weights_from_distributed", None): "S", ("/update_weights", None): "S",
    ("/continue_generation", None): "C", ("/resume", None): "C",
}  # fmt: skip


def _journal_worker(rank, world, config, journal_path):
    """The run, with every call to a server recorded (server, path, tags) in order."""
    from megatron_fork.rl import rl_loop
    from megatron_fork.rollout import http_client

    calls, original, build = [], http_client.ServerClient.call, rl_loop.build_actor

    def build_actor(*args, **kwargs):
        calls.append(("trainer", "build_actor", None))
        return build(*args, **kwargs)

    def call(self, path, body=None, timeout_s=None):
        tags = (body or {}).get("tags") if isinstance(body, dict) else None
        calls.append((self.url, path, tuple(tags) if tags else None))
        return original(self, path, body, timeout_s)

    http_client.ServerClient.call = call
    rl_loop.build_actor = build_actor
    try:
        rl_loop.run_rl(config)
    finally:
        Path(journal_path).write_text(json.dumps(calls))


def _events(calls, url) -> str:
    """One server's calls as events, repeats of G and S folded."""
    events = ""
    for server, path, tags in calls:
        path = path.split("?")[0] if not path.startswith("/wake_up") else path
        event = EVENTS.get((path, tags and tuple(tags)))
        if server == url and event and not (event in "GS" and events.endswith(event)):
            events += event
    return events


def _config(base_model, run_dir, backend, checkpoint_every=2):
    config = rl_config(base_model, run_dir, STEPS, checkpoint_every=checkpoint_every)
    return apply_overrides(
        config,
        [
            "rollout.engine='server'",
            "rollout.servers=2",
            f"rollout.backend='{backend}'",
            "rollout.placement='colocated'",
        ],
    )


@pytest.fixture(scope="module")
def reference(base_model, tmp_path_factory):
    """The in-process engine's run (which a disaggregated server run reproduces)."""
    tmp = tmp_path_factory.mktemp("reference")
    config = rl_config(base_model, tmp / "run", STEPS, checkpoint_every=2)
    _run(config, tmp, "run")
    return read_metrics(tmp / "run" / "metrics.jsonl")


def _run(config, tmp_path, name):
    path = write_config(config, tmp_path / f"{name}.json")
    command = [sys.executable, "-m", "megatron_fork.rl.rl_main", "--config", str(path)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _assert_reproduces(got, reference, backend) -> None:
    assert [r["step"] for r in got] == list(range(STEPS + 1))
    assert got[0] == reference[0]
    for step, expected in zip(got[1:], reference[1:], strict=True):
        seen, wanted = comparable(step), comparable(expected)
        for record in (seen, wanted):  # reward workers timed out by the wall clock (load)
            record.pop("rollout/reward_timeouts")
        colocated = {k: seen.pop(k) for k in list(seen) if k.startswith("colocated/")}
        assert colocated["colocated/trainer_offload_on_gpu"] == 0.0  # counted, not run, on CPU
        assert colocated["colocated/trainer_restore"] >= 1
        assert seen.pop("rollout/memory_releases") >= 1
        if backend == "vllm":  # one request at a time: other fp32 rounding, same tokens
            key = "train/engine_logprob_abs_diff"
            assert max(seen.pop(key), wanted.pop(key)) < 1e-5
        counters = {"rollout/requests_retried": 0.0, "rollout/servers_restarted": 0.0}
        assert seen == {**wanted, **counters}, step["step"]


@pytest.mark.parametrize("backend", ["sglang", "vllm"])
def test_each_step_hands_the_memory_over_in_order(base_model, reference, tmp_path, backend):
    config = _config(base_model, tmp_path / "run", backend)
    journal = tmp_path / "journal.json"
    run_distributed(_journal_worker, 1, config, str(journal), timeout=300)
    calls = json.loads(journal.read_text())
    urls = sorted({url for url, _, _ in calls} - {"trainer"})
    assert len(urls) == 2
    for url in urls:  # start-up release, first sync, eval; 2 steps; the checkpoint's release
        assert _events(calls, url) == "RWSKC" + "GRWSKC" * 3, url
    built = calls.index(["trainer", "build_actor", None])
    releases = [
        i for i, (_, path, _) in enumerate(calls) if _events([calls[i]], calls[i][0]) == "R"
    ]
    assert len(releases) == 8 and releases[1] < built  # both engines released before the model
    _assert_reproduces(read_metrics(tmp_path / "run" / "metrics.jsonl"), reference, backend)


def _servers(base_model, backend, seed):
    from megatron_fork.data.tokenizer import load_tokenizer, special_token_ids

    pad = special_token_ids(load_tokenizer(str(base_model))).pad
    options = dict(protocol=backend, load_format="dummy", max_batch_size=64)
    command = cpu_server_command(str(base_model), **options, pad_token_id=pad, random_seed=seed)
    return ServerPool([command] * 2, client=SERVERS[backend].client)


def _kill_after_checkpoint(config_path, run_dir, record: ReleasedRecord):
    """SIGKILL once a checkpoint is written, at a moment no memory call is in flight (the
    record shows none in doubt while the run is stopped): a kill inside one leaves its engine
    in doubt, which a restart refuses to guess (its own test, ``test_colocated_servers``)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "megatron_fork.rl.rl_main", "--config", str(config_path)],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "latest").is_file():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        while True:
            os.killpg(process.pid, signal.SIGSTOP)
            if not any(memory.in_doubt for memory in record.read().values()):
                break
            os.killpg(process.pid, signal.SIGCONT)
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()


def _leave_released(pool, record: ReleasedRecord, client_class) -> None:
    """What a kill during training leaves: every engine paused and released where the kill
    left it resident (a kill during a sync leaves part of it released: woken as it is)."""
    engines = record.read()
    for url in pool.urls:
        if not engines.get(url, EngineMemory()).released:
            client_class(url, 30.0).release_memory()
            engines[url] = EngineMemory(set(PARTS))
    record.write(engines)


@pytest.mark.parametrize("backend", ["sglang", "vllm"])
def test_a_killed_run_resumes_with_its_engines_left_released(
    base_model, reference, tmp_path, backend
):
    run_dir = tmp_path / "run"
    with _servers(base_model, backend, seed=0) as pool:
        config = _config(base_model, run_dir, backend, checkpoint_every=1)
        urls = "(" + ", ".join(repr(u) for u in pool.urls) + ",)"
        config = apply_overrides(config, [f"rollout.server_urls={urls}"])
        config_path = write_config(config, tmp_path / "run.json")
        record = ReleasedRecord(run_dir / "released_engines.json")
        _kill_after_checkpoint(config_path, run_dir, record)
        _leave_released(pool, record, SERVERS[backend].client)
        _run(config, tmp_path, "run")
        assert record.read() == {url: EngineMemory() for url in pool.urls}  # resident
    got = read_metrics(run_dir / "metrics.jsonl")
    _assert_reproduces(got, reference, backend)


def test_engines_started_with_the_run_are_never_woken_from_an_earlier_record(tmp_path):
    """A colocated recipe's engines start anew with every run (``engines_start_with_run``):
    an earlier run's record is dropped, not replayed on them (resuming what a new sglang
    engine never released would end it). Here nothing listens: without the flag the start-up
    stops, naming the engine the record says is released."""
    url = "http://127.0.0.1:9"
    config = apply_overrides(
        _config(tmp_path / "hf", tmp_path / "run", "sglang"), [f"rollout.server_urls=('{url}',)"]
    )
    record = ReleasedRecord(tmp_path / "run" / "released_engines.json")
    record.path.parent.mkdir()
    record.write({url: EngineMemory(set(PARTS))})
    with pytest.raises(ServerError, match=f"{url}: does not answer"):
        wake_engines_left_released(config)
    assert record.read() == {url: EngineMemory(set(PARTS))}
    wake_engines_left_released(apply_overrides(config, ["rollout.engines_start_with_run=True"]))
    assert record.read() == {}
