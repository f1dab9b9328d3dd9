"""TimeLimitedPool: every worker is initialised before the first task, and a crash shared by
several in-flight tasks is blamed only on the task that crashes alone."""

import functools
import os
import time
from pathlib import Path

import pytest

from megatron_fork.rewards.pool import TimeLimitedPool


def _slow_initializer(marker_dir: str) -> None:
    time.sleep(0.3)  # slower than a warm-up task: a pool that did not wait would miss workers
    Path(marker_dir, str(os.getpid())).touch()


def _echo_or_die(value: str) -> str:
    if value == "die":
        time.sleep(0.1)  # the others are still running when this worker dies
        os._exit(1)
    time.sleep(0.5)
    return value


def test_every_worker_is_initialised_before_the_pool_is_ready(tmp_path):
    initializer = functools.partial(_slow_initializer, str(tmp_path))
    with TimeLimitedPool(num_workers=3, time_limit_s=30, initializer=initializer):
        assert len(list(tmp_path.iterdir())) == 3


def test_a_shared_crash_is_blamed_on_the_culprit_only():
    with TimeLimitedPool(num_workers=4, time_limit_s=30) as pool:  # all four in flight at once
        outcomes = pool.run(_echo_or_die, [("die",), ("a",), ("b",), ("c",)])
    assert outcomes[0].kind == "error" and "worker died" in outcomes[0].error
    assert [(o.kind, o.value) for o in outcomes[1:]] == [("ok", "a"), ("ok", "b"), ("ok", "c")]


_OWNER = """
import os, sys, time
from megatron_fork.rewards.pool import TimeLimitedPool
pool = TimeLimitedPool(num_workers=2, time_limit_s=5.0, start_method=sys.argv[1])
print(*[p.pid for p in pool._executor._processes.values()], flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("start_method", ["spawn"])
def test_workers_exit_when_their_owner_is_killed(start_method):
    """SIGKILL gives the owner no chance to stop its pool: the workers notice and exit (and
    live while it does). With "forkserver" their parent is the fork server, which here outlives
    a SIGKILLed owner: those workers stay (the config's default is "spawn")."""
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-c", _OWNER, start_method]
    owner = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in owner.stdout.readline().split()]
        time.sleep(2.5)  # more than the workers' poll interval
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    finally:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=30)
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    """Running (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
