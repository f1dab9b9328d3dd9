"""TimeLimitedPool: every worker is initialised before the first task, and a crash shared by
several in-flight tasks is blamed only on the task that crashes alone."""

import functools
import os
import time
from pathlib import Path

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
