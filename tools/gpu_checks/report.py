"""The pass/fail table (one row per check, its steps indented under it) and the JSON file."""

import json
from pathlib import Path

from tools.gpu_checks.core import FAILED, PASSED, SKIPPED, CheckResult

LABELS = {PASSED: "PASS", FAILED: "FAIL", SKIPPED: "SKIP"}


def exit_status(results: dict[str, CheckResult]) -> int:
    """0 when every check that ran passed (skipped ones do not count), else 1."""
    return int(any(r.status == FAILED for r in results.values()))


def _row(name: str, status: str, seconds, detail: str, width: int) -> str:
    time = "-" if seconds is None else f"{seconds:.0f}s"
    return f"{name:<{width}}  {LABELS[status]:<6}  {time:>6}  {detail}"


def table(results: dict[str, CheckResult]) -> str:
    """One line per check and per step of a check, then the counts."""
    names = [*results, *(f"  {p.name}" for r in results.values() for p in r.parts)]
    width = max(len(n) for n in names) if names else 5
    lines = [f"{'check':<{width}}  {'status':<6}  {'time':>6}  detail"]
    for name, result in results.items():
        lines.append(_row(name, result.status, result.seconds, result.detail, width))
        lines += [_row(f"  {p.name}", p.status, None, p.detail, width) for p in result.parts]
    counts = {s: sum(r.status == s for r in results.values()) for s in (PASSED, FAILED, SKIPPED)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    if counts[PASSED] + counts[FAILED] == 0:
        summary += " (nothing ran on this machine)"
    return "\n".join(lines + [summary])


def as_json(results: dict[str, CheckResult], meta: dict) -> dict:
    checks = [{"name": n, **r.to_dict()} for n, r in results.items()]
    return {**meta, "exit_status": exit_status(results), "checks": checks}


def write_json(path: Path, results: dict[str, CheckResult], meta: dict) -> None:
    """Written to a temporary sibling and renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(as_json(results, meta), indent=2) + "\n")
    tmp.replace(path)
