"""One run per output directory: a lock file, so a second job pointed at the same
``output_dir`` refuses to start (naming the first) instead of interleaving checkpoints and
metrics with it.

The lock (``output_dir/run.lock``, JSON) names its holder: the Slurm job id (or "local"), the
host and the process id. Rank 0 takes it before the run reads anything and keeps it fresh from
a daemon thread (its modification time, every ``HEARTBEAT_S``); it is released at the end. A lock
is taken over when it is this job's own (a Slurm requeue keeps the job id), when its local holder
process is gone (same host), or when it has not been refreshed for ``STALE_AFTER_S`` (a job that
was killed cannot release it); otherwise ``RunLockedError`` names the holder and the way out.
"""

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LOCK_FILE = "run.lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0
"""Ten missed heartbeats: the holder is gone (a live rank 0 refreshes the lock every minute,
even inside a long rollout or checkpoint)."""


class RunLockedError(RuntimeError):
    """Another live job holds the output directory."""


@dataclass(frozen=True)
class RunOwner:
    job: str
    """SLURM_JOB_ID, or "local" outside Slurm."""
    host: str
    pid: int

    @classmethod
    def this_process(cls) -> "RunOwner":
        return cls(os.environ.get("SLURM_JOB_ID", "local"), socket.gethostname(), os.getpid())

    def describe(self) -> str:
        where = f"{self.host} pid {self.pid}"
        return where if self.job == "local" else f"Slurm job {self.job} ({where})"


def _read_owner(path: Path) -> RunOwner | None:
    try:
        return RunOwner(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # half-written or foreign: treated as stale below only by its age


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _may_take_over(holder: RunOwner | None, me: RunOwner, age_s: float) -> bool:
    if age_s > STALE_AFTER_S:
        return True
    if holder is None:
        return False
    if holder.job != "local" and holder.job == me.job:
        return True  # this job again (a Slurm requeue)
    return holder.job == "local" and holder.host == me.host and not _process_alive(holder.pid)


class RunLock:
    """The held lock of one run (``acquire``, then ``release``)."""

    def __init__(self, output_dir: str | Path, owner: RunOwner | None = None):
        self.path = Path(output_dir) / LOCK_FILE
        self.owner = owner or RunOwner.this_process()
        self._stop = threading.Event()

    def acquire(self) -> "RunLock":
        """Take the lock (or raise ``RunLockedError``) and start refreshing it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(asdict(self.owner))
        try:
            with open(self.path, "x") as file:  # atomic: exactly one creator wins
                file.write(text)
        except FileExistsError:
            self._take_over_or_refuse(text)
        threading.Thread(target=self._heartbeat, daemon=True).start()
        return self

    def _take_over_or_refuse(self, text: str) -> None:
        holder = _read_owner(self.path)
        age_s = time.time() - self.path.stat().st_mtime
        if not _may_take_over(holder, self.owner, age_s):
            who = holder.describe() if holder else "an unreadable lock"
            raise RunLockedError(
                f"{self.path.parent} is in use by {who} (lock refreshed {age_s:.0f} s ago): "
                f"give this run another output_dir, or, if that job is no longer running, "
                f"delete {self.path} (a lock not refreshed for {STALE_AFTER_S:.0f} s is taken "
                "over by itself)"
            )
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.path)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return  # the directory is gone: nothing left to guard

    def release(self) -> None:
        """Stop refreshing; remove the lock if it is still ours."""
        self._stop.set()
        if _read_owner(self.path) == self.owner:
            self.path.unlink(missing_ok=True)
