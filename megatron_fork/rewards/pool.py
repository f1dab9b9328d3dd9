"""A process pool in which every task has a wall-clock limit, usable from any thread.

Why a process pool: math-verify's own timeout uses ``signal.alarm``, which works only in a
process's main thread, and a runaway sympy computation cannot be interrupted from another
thread. A separate process can always be killed.

How the limit is kept: at most ``num_workers`` tasks are in flight, so a submitted task starts
on an idle worker at once and its deadline is its submission time + ``time_limit_s``. When a
task passes its deadline, all workers are killed (``ProcessPoolExecutor`` cannot kill one) and a
fresh, warmed-up pool replaces them; the timed-out task is reported as a timeout and the other
tasks that were in flight are re-run from the start, unpenalised. When a worker dies (segfault,
OOM kill) every task in flight fails with it, so none is blamed: they are re-run one at a time
until the culprit crashes alone; a task that crashes alone is retried once, then reported as an
error.

Workers are started with "spawn" or "forkserver", never "fork" (the caller may hold threads,
CUDA contexts or process groups), and every one of them is warmed up before the first task (they
meet at a barrier after their initializer) so that start-up time (spawn + imports) is never
charged to a task's limit.
"""

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Literal

MAX_CRASH_RETRIES = 1
"""Re-runs granted to a task whose worker died under it before it is reported as an error."""


@dataclass(frozen=True)
class TaskOutcome:
    """Result of one task: ``ok`` with its value, ``timeout``, or ``error`` with the reason."""

    kind: Literal["ok", "timeout", "error"]
    value: Any = None
    error: str = ""


def _worker_ready() -> int:
    """Warm-up task: returns once the worker has started and run its initializer."""
    return os.getpid()


def _exit_when_parent_dies(poll_s: float = 1.0) -> None:
    """A worker whose parent was killed (SIGKILL leaves no time to stop the pool) exits within
    ``poll_s`` instead of lingering as an orphan (start method "spawn"; under "forkserver" the
    parent is the fork server, which may outlive the owner). Polled from a thread: prctl's
    parent-death signal would fire when the parent's spawning *thread* ends, any thread."""
    parent_pid = os.getppid()

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _initialize_worker(barrier, initializer, timeout_s: float) -> None:
    """Run the caller's initializer, then wait for every other worker to be ready too."""
    _exit_when_parent_dies()
    if initializer is not None:
        initializer()
    barrier.wait(timeout_s)


def _kill_executor(executor: ProcessPoolExecutor) -> None:
    """Kill every worker at once (hung ones included), then release the executor."""
    kill_workers = getattr(executor, "kill_workers", None)  # public from Python 3.14
    if kill_workers is not None:
        kill_workers()
    else:  # Python < 3.14: the executor's own table of worker processes
        for process in list((executor._processes or {}).values()):
            process.kill()
    executor.shutdown(wait=True, cancel_futures=True)


class TimeLimitedPool:
    """``num_workers`` processes running ``fn(*args)`` tasks, each within ``time_limit_s``.

    Use as a context manager (or call ``close``). ``run`` is serialised by a lock, so one pool
    may be shared by threads; each call blocks until its whole batch is decided.
    """

    def __init__(
        self,
        num_workers: int,
        time_limit_s: float,
        start_method: str = "spawn",
        startup_timeout_s: float = 120.0,
        initializer: Callable[[], None] | None = None,
    ):
        self.num_workers = num_workers
        self.time_limit_s = time_limit_s
        self.startup_timeout_s = startup_timeout_s
        self.restarts = 0
        """How many times the workers were killed and replaced (timeouts and crashes)."""
        self._context = multiprocessing.get_context(start_method)
        self._initializer = initializer
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._executor = self._start_executor()

    def _start_executor(self) -> ProcessPoolExecutor:
        """A new executor whose ``num_workers`` workers have all started and initialised."""
        barrier = self._context.Barrier(self.num_workers)
        executor = ProcessPoolExecutor(
            max_workers=self.num_workers,
            mp_context=self._context,
            initializer=_initialize_worker,
            initargs=(barrier, self._initializer, self.startup_timeout_s),
        )
        # One submit per worker: with spawn/forkserver each submit that finds no idle worker
        # starts a new one, so this starts them all; the barrier holds every worker until all
        # have initialised, so no warm-up task can finish on a half-started pool.
        futures = [executor.submit(_worker_ready) for _ in range(self.num_workers)]
        done, not_done = wait(futures, timeout=self.startup_timeout_s)
        failed = [f.exception() for f in done if f.exception() is not None]
        if not_done or failed:
            _kill_executor(executor)
            reason = failed[0] if failed else f"not ready after {self.startup_timeout_s} s"
            raise RuntimeError(f"reward workers failed to start: {reason!r}")
        return executor

    def _restart(self) -> None:
        """Kill all workers (hung ones included) and replace them with a warmed-up pool."""
        _kill_executor(self._executor)
        self._executor = None
        self.restarts += 1
        self._executor = self._start_executor()

    def run(self, fn: Callable[..., Any], tasks: Sequence[tuple]) -> list[TaskOutcome]:
        """``fn(*task)`` for every task, in input order. ``fn`` and the arguments must pickle
        (``fn`` a module-level function). Never raises for a task's failure or timeout."""
        with self._lock:
            if self._executor is None:
                raise RuntimeError("TimeLimitedPool is closed")
            batch = _Batch(fn, tasks)
            while batch.pending or batch.inflight:
                self._submit_up_to_capacity(batch)
                if self._collect(batch):
                    batch.requeue_inflight()
                    self._restart()
            return batch.outcomes

    def _submit_up_to_capacity(self, batch: "_Batch") -> None:
        """Hand pending tasks to idle workers; at most one task per worker is ever in flight."""
        capacity = 1 if batch.suspects else self.num_workers  # isolate after a shared crash
        while batch.pending and len(batch.inflight) < capacity:
            index = batch.pending.popleft()
            future = self._executor.submit(batch.fn, *batch.tasks[index])
            batch.inflight[future] = (index, time.monotonic() + self.time_limit_s)

    def _collect(self, batch: "_Batch") -> bool:
        """Wait for a task to finish or the earliest deadline; record what is decided.

        Returns True when the workers must be replaced (a timeout, or a dead worker).
        """
        earliest = min(deadline for _, deadline in batch.inflight.values())
        wait(
            batch.inflight,
            timeout=max(0.0, earliest - time.monotonic()),
            return_when=FIRST_COMPLETED,
        )
        restart = False
        alone = len(batch.inflight) == 1
        for future in [f for f in batch.inflight if f.done()]:
            index, _ = batch.inflight.pop(future)
            restart |= batch.record(index, future, alone)
        now = time.monotonic()
        for future in [f for f, (_, deadline) in batch.inflight.items() if deadline <= now]:
            index, _ = batch.inflight.pop(future)
            batch.outcomes[index] = TaskOutcome(
                "timeout", error=f"verification exceeded {self.time_limit_s} s"
            )
            restart = True
        return restart

    def close(self) -> None:
        """Stop the workers. Idempotent. Kills rather than waits, so a worker left busy by an
        interrupted ``run`` cannot block shutdown (between normal runs none is busy)."""
        with self._lock:
            if self._executor is not None:
                _kill_executor(self._executor)
                self._executor = None

    def __enter__(self) -> "TimeLimitedPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _Batch:
    """Book-keeping of one ``run`` call: what is pending, in flight, decided, and crash counts."""

    def __init__(self, fn: Callable[..., Any], tasks: Sequence[tuple]):
        self.fn = fn
        self.tasks = tasks
        self.outcomes: list[TaskOutcome | None] = [None] * len(tasks)
        self.pending: deque[int] = deque(range(len(tasks)))
        self.inflight: dict[Future, tuple[int, float]] = {}
        """future -> (task index, deadline on the monotonic clock)."""
        self.crashes = [0] * len(tasks)
        self.suspects: set[int] = set()
        """Tasks in flight during a crash that was not theirs alone: re-run one at a time."""

    def record(self, index: int, future: Future, alone: bool) -> bool:
        """Store a finished future's outcome; True if its worker died (the pool is broken).
        A crash counts against the task only when it was ``alone`` in flight."""
        error = future.exception()
        if isinstance(error, BrokenProcessPool):
            if not alone:
                self.suspects.add(index)
                self.pending.appendleft(index)
                return True
            self.crashes[index] += 1
            if self.crashes[index] > MAX_CRASH_RETRIES:
                self.outcomes[index] = TaskOutcome("error", error=f"worker died: {error}")
                self.suspects.discard(index)
            else:
                self.pending.appendleft(index)
            return True
        self.suspects.discard(index)
        if error is not None:
            self.outcomes[index] = TaskOutcome("error", error=f"{type(error).__name__}: {error}")
        else:
            self.outcomes[index] = TaskOutcome("ok", value=future.result())
        return False

    def requeue_inflight(self) -> None:
        """Tasks still in flight when the workers are replaced start again, unpenalised."""
        for index, _ in self.inflight.values():
            self.pending.appendleft(index)
        self.inflight.clear()
