"""What a check needs, what it is given and what it returns. Plain Python (no torch), so the
command line lists and selects checks at once on any machine.

A check is a function ``fn(ctx: CheckContext, **kwargs) -> CheckResult`` that runs in its own
process (``worker``). It fails by raising ``CheckFailed`` with one line, or by returning a
failed result; a check made of steps (convert, train, resume, ...) records each as a ``Part``
through ``Parts``, so the table names the step that failed and the ones never reached.
"""

import math
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
STATUSES = (PASSED, FAILED, SKIPPED)


class CheckFailed(Exception):
    """A check's verdict: the message is the one-line detail of the table."""


@dataclass(frozen=True)
class Needs:
    """What a check needs of the machine; one it lacks makes the check skip, not fail."""

    gpus: int = 1
    """CUDA devices (0: runs on a CPU)."""
    transformer_engine: bool = False
    sglang: bool = False
    """sglang importable by ``SGLANG_PYTHON`` (else by this interpreter)."""
    vllm: bool = False
    """vLLM importable by ``VLLM_PYTHON`` (else by this interpreter)."""

    def describe(self) -> str:
        parts = [f"CUDA, {self.gpus} GPU{'s' if self.gpus != 1 else ''}" if self.gpus else "CPU"]
        parts += ["Transformer Engine"] * self.transformer_engine + ["sglang"] * self.sglang
        parts += ["vLLM"] * self.vllm
        return ", ".join(parts)


@dataclass(frozen=True)
class CheckContext:
    """Given to every check."""

    work: Path
    """The check's own folder (its logs, models, runs)."""
    timeout_s: float
    """The check's time limit (its steps share it; the runner kills the check past it)."""
    max_logprob_diff: float
    """Largest mean |trainer - engine| log-prob (nats) a run's steps may show."""


@dataclass(frozen=True)
class Part:
    """One step of a check."""

    name: str
    status: str
    detail: str


@dataclass(frozen=True)
class CheckResult:
    status: str
    detail: str
    """One line: the verdict and its main figures."""
    figures: dict = field(default_factory=dict)
    """Numbers (and short strings) behind the verdict, for ``--json``."""
    parts: tuple[Part, ...] = ()
    seconds: float | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r}: one of {STATUSES}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["figures"] = {k: jsonable(v) for k, v in self.figures.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "CheckResult":
        parts = tuple(Part(**p) for p in data.get("parts", ()))
        return cls(
            data["status"], data["detail"], data.get("figures", {}), parts, data.get("seconds")
        )


def jsonable(value):
    """A figure as standard JSON: non-finite floats become strings ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def one_line(error: BaseException) -> str:
    """``Type: last line of the message``: an exception as a table's detail."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[-1]}" if lines else type(error).__name__


class Parts:
    """Runs a check's steps in order: after the first failure the rest are listed as not run.

    ``step(name, fn)`` calls ``fn()``, which returns ``(detail, value)`` or raises
    ``CheckFailed`` (any other exception fails the step too, its traceback printed to the
    check's log); the value is returned (None once a step has failed)."""

    def __init__(self):
        self.parts: list[Part] = []
        self.figures: dict = {}
        self.failed = False

    def step(self, name: str, fn):
        if self.failed:
            self.parts.append(Part(name, SKIPPED, "not run: an earlier step failed"))
            return None
        try:
            detail, value = fn()
        except CheckFailed as failure:
            return self._fail(name, str(failure))
        except Exception as error:
            traceback.print_exc()
            return self._fail(name, one_line(error))
        self.parts.append(Part(name, PASSED, detail))
        return value

    def _fail(self, name: str, detail: str) -> None:
        self.parts.append(Part(name, FAILED, detail))
        self.failed = True

    def result(self, summary: str) -> CheckResult:
        """Failed with the first failed step's detail, else passed with ``summary``."""
        failed = next((p for p in self.parts if p.status == FAILED), None)
        if failed is not None:
            parts = tuple(self.parts)
            return CheckResult(FAILED, f"{failed.name}: {failed.detail}", self.figures, parts)
        return CheckResult(PASSED, summary, self.figures, tuple(self.parts))
