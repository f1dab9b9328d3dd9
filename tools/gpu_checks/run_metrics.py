"""What a run's ``metrics.jsonl`` must show for the kit: every step logged, a finite loss, and
the mean |trainer - engine| log-prob of the sampled tokens (``train/engine_logprob_abs_diff``,
the weight sync's check) finite and, when a limit is given, below it."""

import json
import math
from pathlib import Path

from tools.gpu_checks.core import CheckFailed

LOSS = "train/loss"
ENGINE_DIFF = "train/engine_logprob_abs_diff"
GRAD_NORM = "optim/grad_norm"


def step_records(run_dir: Path) -> dict[int, dict]:
    """Step -> its record (step 0 is the evaluation before training)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise CheckFailed(f"{path}: no metrics (the run logged nothing)")
    records = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records[int(record["step"])] = record
    return records


def _finite(record: dict, key: str, step: int) -> float:
    value = record.get(key)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise CheckFailed(f"step {step}: {key} is {value!r}, not a finite number")
    return float(value)


def check_steps(
    records: dict[int, dict],
    steps: list[int],
    max_engine_diff: float | None = None,
    positive_grad_norm: bool = False,
) -> dict:
    """Per step: loss and engine diff (and with ``positive_grad_norm`` a finite grad norm > 0,
    i.e. the optimizer step saw a gradient). Returns the figures; raises CheckFailed."""
    figures = {}
    for step in steps:
        if step not in records:
            raise CheckFailed(f"step {step} missing from metrics.jsonl (logged: {sorted(records)})")
        record = records[step]
        figures[f"step{step}/loss"] = _finite(record, LOSS, step)
        diff = figures[f"step{step}/engine_logprob_abs_diff"] = _finite(record, ENGINE_DIFF, step)
        if max_engine_diff is not None and diff > max_engine_diff:
            raise CheckFailed(
                f"step {step}: {ENGINE_DIFF} {diff:.4g} > {max_engine_diff:g} nats: the "
                "engine does not compute with the trainer's weights"
            )
        if positive_grad_norm:
            norm = figures[f"step{step}/grad_norm"] = _finite(record, GRAD_NORM, step)
            if norm <= 0:
                raise CheckFailed(f"step {step}: {GRAD_NORM} is 0: no gradient reached")
    return figures


def describe(figures: dict, steps: list[int]) -> str:
    loss = ", ".join(f"{figures[f'step{s}/loss']:.4g}" for s in steps)
    diff = ", ".join(f"{figures[f'step{s}/engine_logprob_abs_diff']:.3g}" for s in steps)
    return f"loss {loss}; engine |dlogprob| {diff}"
