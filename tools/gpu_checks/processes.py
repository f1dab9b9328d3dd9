"""Commands a check runs (converters, trainers under torchrun): logged to a file, bounded by
the check's deadline, and stopped early when a process they depend on (the sglang engine) dies,
so a dead engine fails the check at once with the engine's last log line instead of after the
trainer's health-wait."""

import subprocess
import sys
import time
from pathlib import Path

from tools.gpu_checks.core import CheckFailed
from tools.gpu_checks.runner import REPO, child_environment, last_line

POLL_S = 1.0


def torchrun(nproc: int, module: str, args: list[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone`` (a free rendezvous port on this node)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "-m", module, *args,
    ]  # fmt: skip


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (torchrun stops its workers on it), then SIGKILL after 30 s."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_logged(
    command: list[str],
    log: Path,
    deadline: float,
    env_updates: dict | None = None,
    watch: tuple[str, subprocess.Popen, Path] | None = None,
) -> float:
    """Run ``command`` (cwd: this checkout) until it exits; the seconds it took. Raises
    CheckFailed with the log's last line when it fails, runs past ``deadline``
    (``time.monotonic()``), or when ``watch`` = (name, process, its log) exits first."""
    env = {**child_environment(), **(env_updates or {})}
    start = time.monotonic()
    with open(log, "w") as out:
        out.write(" ".join(command) + "\n")
        out.flush()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = _wait(process, deadline, watch)
        finally:
            if process.poll() is None:
                _stop(process)
    if code != 0:
        raise CheckFailed(f"exit status {code}: {last_line(log)} (log: {log})")
    return time.monotonic() - start


def _wait(process, deadline: float, watch) -> int:
    while True:
        code = process.poll()
        if code is not None:
            return code
        if watch is not None and watch[1].poll() is not None:
            name, other, other_log = watch
            raise CheckFailed(
                f"{name} exited (status {other.returncode}): {last_line(other_log)} "
                f"(log: {other_log})"
            )
        if time.monotonic() > deadline:
            raise CheckFailed("ran out of the check's time")
        time.sleep(POLL_S)
