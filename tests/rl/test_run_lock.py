"""One run per output directory: a second job refuses naming the first; a requeue of the same
Slurm job, a dead local holder and a lock nobody refreshes are taken over; a run refuses on
every rank."""

import json
import os
import subprocess
import sys
import time

import pytest

from megatron_fork.rl import run_lock
from megatron_fork.rl.run_lock import LOCK_FILE, RunLock, RunLockedError, RunOwner
from tests.support.distributed import run_distributed


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_job_is_refused_with_the_first_jobs_id(tmp_path):
    first = RunLock(tmp_path, RunOwner("4242", "node1", 11)).acquire()
    with pytest.raises(RunLockedError, match="Slurm job 4242"):
        RunLock(tmp_path, RunOwner("4343", "node2", 12)).acquire()
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    RunLock(tmp_path, RunOwner("4343", "node2", 12)).acquire().release()  # free again


def test_a_requeued_job_takes_its_own_lock_back(tmp_path):
    RunLock(tmp_path, RunOwner("4242", "node1", 11)).acquire()  # killed: never released
    again = RunLock(tmp_path, RunOwner("4242", "node7", 99)).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "node7"
    again.release()


def test_a_dead_local_holder_on_this_host_is_taken_over(tmp_path):
    host = RunOwner.this_process().host
    RunLock(tmp_path, RunOwner("local", host, _dead_pid())).acquire()
    RunLock(tmp_path, RunOwner("local", host, os.getpid())).acquire().release()
    RunLock(tmp_path, RunOwner("local", host, os.getpid())).acquire()
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):  # its holder is alive
        RunLock(tmp_path, RunOwner("local", "otherhost", 5)).acquire()


def test_a_lock_nobody_refreshes_is_stale(tmp_path):
    RunLock(tmp_path, RunOwner("4242", "node1", 11)).acquire()
    old = os.path.getmtime(tmp_path / LOCK_FILE) - run_lock.STALE_AFTER_S - 1
    os.utime(tmp_path / LOCK_FILE, (old, old))
    RunLock(tmp_path, RunOwner("4343", "node2", 12)).acquire().release()


def test_release_leaves_a_lock_that_is_not_ours(tmp_path):
    mine = RunLock(tmp_path, RunOwner("4242", "node1", 11)).acquire()
    RunLock(tmp_path, RunOwner("4242", "node9", 13)).acquire()  # the requeued job took it
    mine.release()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "node9"


def test_heartbeat_refreshes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    lock = RunLock(tmp_path, RunOwner("4242", "node1", 11)).acquire()
    os.utime(tmp_path / LOCK_FILE, (0, 0))  # as if not refreshed since 1970
    deadline = time.monotonic() + 5
    while os.path.getmtime(tmp_path / LOCK_FILE) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    refreshed = os.path.getmtime(tmp_path / LOCK_FILE) > 0
    lock.release()
    assert refreshed


def _locked_run_worker(rank, world, base_model, out):
    from megatron_fork.rl.rl_loop import run_rl
    from tests.support.tiny_run import rl_config

    with pytest.raises((RunLockedError, RuntimeError), match="Slurm job 777"):
        run_rl(rl_config(base_model, out, steps=1))


def test_a_run_on_a_locked_output_dir_refuses_on_every_rank(tmp_path, base_model):
    out = tmp_path / "run"
    RunLock(out, RunOwner("777", "elsewhere", 1)).acquire()
    run_distributed(_locked_run_worker, 2, str(base_model), str(out))
    assert not (out / "checkpoints").exists()
