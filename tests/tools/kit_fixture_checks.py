"""Checks that misbehave on purpose, for the kit's runner tests (run by its worker process)."""

import os
import signal
import subprocess
import sys
import time

from tools.gpu_checks.core import PASSED, CheckResult, Parts


def passes(ctx, value: float = 1.0) -> CheckResult:
    return CheckResult(PASSED, "fine", {"value": value, "not_finite": float("nan")})


def crashes(ctx) -> CheckResult:
    print("boom: the check died without a result", flush=True)
    os._exit(3)


def raises(ctx) -> CheckResult:
    raise RuntimeError("first line\nthe real reason")


def hangs(ctx) -> CheckResult:
    time.sleep(600)


def hangs_with_child(ctx) -> CheckResult:
    """Starts a child (as a check starts a trainer) that outlives the worker unless the runner
    stops the whole process group; its pid goes to ``child.pid``."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    (ctx.work / "child.pid").write_text(str(child.pid))
    time.sleep(600)


def hangs_with_engine(ctx) -> CheckResult:
    """Starts a child in a session of its own (as the sglang engine is), which the runner's
    signal to the worker's group cannot reach: only the check's ``finally`` stops it."""
    from tools.gpu_checks import engine

    child = engine.start(
        [sys.executable, "-c", "import time; time.sleep(600)"], None, ctx.work / "e"
    )
    (ctx.work / "child.pid").write_text(str(child.pid))
    try:
        time.sleep(600)
    finally:
        engine.stop(child)


def ignores_sigterm(ctx) -> CheckResult:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)


def fails_in_second_step(ctx) -> CheckResult:
    parts = Parts()
    parts.step("first", lambda: ("ok", 1))
    parts.step("second", lambda: 1 / 0)
    parts.step("third", lambda: ("never", None))
    return parts.result("unreachable")
