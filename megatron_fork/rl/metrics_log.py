"""Per-step metrics to ``metrics.jsonl`` (one JSON object per line, with "step") and to
TensorBoard, written by rank 0.

On resume the log is cut back to the checkpoint's step first, so a step that ran after the
checkpoint and is run again appears once; a run restarted before its first checkpoint
(``resume_step=-1``) starts a fresh log.
"""

import json
import math
from pathlib import Path

from megatron_fork.atomic_files import write_text_atomically

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics file (a torn last line from a killed run is ignored)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _json_value(value):
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


class MetricsLog:
    def __init__(self, output_dir: str | Path, tensorboard: bool = True, resume_step: int = 0):
        self.path = Path(output_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                str(Path(output_dir) / "tensorboard"), purge_step=resume_step + 1
            )

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        write_text_atomically(
            self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        )

    def log(self, step: int, metrics: dict) -> None:
        record = {"step": step, **{k: _json_value(v) for k, v in sorted(metrics.items())}}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if record[key] is not None:
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
