"""An evaluation's folder: ``run.json`` (what the results depend on), ``samples.jsonl`` (one line
per sample, appended a whole prompt at a time) and ``summary.json`` (written last).

Resume trusts only what a kill cannot have left half-done: a prompt counts as finished when
all ``k`` of its lines parse and name it; a torn last line or a prompt with fewer lines is
dropped (and generated again), and the file is rewritten atomically with the trusted lines
before anything is appended, so a later append never follows a torn line. Results written
under other settings (``RESULT_KEYS``) or another prompt file are refused, not mixed in.
"""

import json
import os
from pathlib import Path

from megatron_fork.atomic_files import write_text_atomically
from megatron_fork.eval.settings import EvalSetupError

RUN_FILE = "run.json"
SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"


class ResultStore:
    def __init__(self, out: str | Path, run: dict, restart: bool = False):
        """Open ``out`` for the evaluation described by ``run`` (JSON-able; compared with the
        ``run.json`` there). ``restart`` discards earlier results instead of resuming them."""
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise EvalSetupError(f"output {out}: a file, not a folder; pass a folder for --out")
        self.out.mkdir(parents=True, exist_ok=True)
        self.samples_path = self.out / SAMPLES_FILE
        if restart:
            for name in (SAMPLES_FILE, SUMMARY_FILE, RUN_FILE):
                (self.out / name).unlink(missing_ok=True)
        self._check_same_run(run)
        write_text_atomically(self.out / RUN_FILE, json.dumps(run, indent=2, sort_keys=True))

    def _check_same_run(self, run: dict) -> None:
        path = self.out / RUN_FILE
        if not path.is_file():
            return
        earlier = json.loads(path.read_text())
        changed = sorted(k for k in set(run) | set(earlier) if run.get(k) != earlier.get(k))
        if changed:
            listing = "; ".join(f"{k} {earlier.get(k)!r} then, {run.get(k)!r} now" for k in changed)
            raise EvalSetupError(
                f"output {self.out} holds results of another evaluation ({listing}): pass "
                "another --out, or --restart to discard them"
            )

    def finished(self, prompt_ids: list[str], k: int) -> dict[int, list[dict]]:
        """Prompt index -> its ``k`` sample records (by sample index), for every prompt whose
        results are complete; the file is rewritten to hold exactly those."""
        by_prompt: dict[int, dict[int, dict]] = {}
        # Records end at "\n" only: json.dumps leaves U+2028/U+2029/U+0085 in a response
        # unescaped, and str.splitlines would cut a record there.
        text = self.samples_path.read_text(encoding="utf-8") if self._has_samples() else ""
        *whole, torn = text.split("\n")
        lines = [line + "\n" for line in whole] + ([torn] if torn else [])
        for line in lines:
            record = _parsed(line)
            if record is None:
                continue  # torn by a kill mid-write
            p, i = record["prompt_index"], record["sample_index"]
            if p < len(prompt_ids) and record["prompt_id"] == prompt_ids[p] and 0 <= i < k:
                by_prompt.setdefault(p, {})[i] = record
        done = {
            p: [samples[i] for i in range(k)]
            for p, samples in sorted(by_prompt.items())
            if len(samples) == k
        }
        kept = "".join(_line(r) for records in done.values() for r in records)
        if kept != "".join(lines):
            write_text_atomically(self.samples_path, kept)
        return done

    def _has_samples(self) -> bool:
        return self.samples_path.is_file()

    def append(self, records: list[dict]) -> None:
        """Add whole prompts' records in one write, flushed to disk before returning."""
        with open(self.samples_path, "a", encoding="utf-8") as f:
            f.write("".join(_line(r) for r in records))
            f.flush()
            os.fsync(f.fileno())

    def write_summary(self, summary: dict) -> Path:
        path = self.out / SUMMARY_FILE
        write_text_atomically(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return path


def _line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"


def _parsed(line: str) -> dict | None:
    """A complete line's record, or None (a torn line: no newline, or not a JSON record)."""
    if not line.endswith("\n"):
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    keys = ("prompt_index", "prompt_id", "sample_index", "correct")
    return record if isinstance(record, dict) and all(k in record for k in keys) else None
