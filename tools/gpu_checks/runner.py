"""Runs one check in its own process group with a time limit, so a crash, a hang or a stuck
collective in one check cannot take the table down.

The worker (``python -m tools.gpu_checks.worker``) starts a new session; everything it starts
(trainers under torchrun, converters) stays in that group, except sglang engines, which the
check stops itself. Past the limit the group gets SIGTERM (torchrun passes it on to its
workers; the worker's ``finally`` blocks stop its engines), then SIGKILL after a grace period.
No result file afterwards means the check crashed: the last line of its log says why.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tools.gpu_checks.core import FAILED, CheckContext, CheckResult
from tools.gpu_checks.registry import Check

REPO = Path(__file__).resolve().parents[2]
GRACE_S = 90.0
"""Between SIGTERM and SIGKILL: time for the check to stop its trainer (torchrun passes the
signal on) and its engine, each given 30 s (``processes``, ``engine``) before a SIGKILL."""


def child_environment(environ=os.environ) -> dict:
    """This checkout first on the path, so the checks and what they launch use its code."""
    env = dict(environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


_ERROR = re.compile(r"\b\w*(Error|Exception|Timeout)\b:|\berror:")
_LAUNCHER_NOISE = re.compile(r"ChildFailedError|SignalException|elastic/|^[=\-]+$")


def last_line(log: Path) -> str:
    """The line of a log that says why its process failed: the last error line (``XError:
    ...``, ``error: ...``) that is not torchrun's own report about its worker, else the last
    line with any text; shortened."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    lines = [ln for ln in lines if not _LAUNCHER_NOISE.search(ln)]
    errors = [ln for ln in lines if _ERROR.search(ln)]
    return ((errors or lines or ["(empty log)"])[-1])[:300]


def signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def stop_group(process: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGTERM to ``process``'s group (it leads it), SIGKILL to what is left after ``grace_s``."""
    signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    signal_group(process.pid, signal.SIGKILL)  # stragglers of a worker that exited, too
    process.wait()


def worker_command(check: Check, ctx: CheckContext, result: Path) -> list[str]:
    return [
        sys.executable, "-m", "tools.gpu_checks.worker",
        "--target", check.target, "--kwargs", json.dumps(check.kwargs),
        "--work", str(ctx.work), "--result", str(result),
        "--timeout-s", str(ctx.timeout_s), "--max-logprob-diff", str(ctx.max_logprob_diff),
    ]  # fmt: skip


def run_in_subprocess(check: Check, ctx: CheckContext, log: Path) -> CheckResult:
    """The check's result, with its wall time; failed when it crashed or ran past its limit."""
    ctx.work.mkdir(parents=True, exist_ok=True)
    result = ctx.work / "result.json"
    result.unlink(missing_ok=True)
    start = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(
            worker_command(check, ctx, result),
            cwd=REPO,
            env=child_environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=ctx.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        stop_group(process, grace_s=GRACE_S if timed_out else 0.0)
    seconds = time.monotonic() - start
    if timed_out:
        return CheckResult(
            FAILED, f"timed out after {ctx.timeout_s:.0f} s (log: {log})", seconds=seconds
        )
    if not result.is_file():
        detail = f"crashed (exit status {code}): {last_line(log)} (log: {log})"
        return CheckResult(FAILED, detail, seconds=seconds)
    data = json.loads(result.read_text())
    data["seconds"] = seconds
    return CheckResult.from_dict(data)
