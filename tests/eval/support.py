"""Prompt files and an engine wrapper for the evaluator's tests."""

import json
from dataclasses import replace
from pathlib import Path

from megatron_fork.data.synthetic_task import build_splits
from megatron_fork.eval.engines import BuiltEngine, build_engine
from megatron_fork.eval.settings import EvalSettings
from tests.support.tiny_run import DATA, MAX_NEW_TOKENS


def write_prompt_file(path: Path, prompts: int) -> Path:
    """``prompts`` AIME-style rows (id, problem, answer) from the tiny run's task: its held-out
    prompts, then its training prompts, repeated under new ids when more are asked for. JSONL,
    or parquet when ``path`` ends in ``.parquet``."""
    splits = build_splits(replace(DATA, synthetic_heldout=20).synthetic_task())
    pool = list(splits.heldout) + list(splits.train)
    rows = [
        {"id": f"q{n}", "problem": pool[n % len(pool)].prompt, "answer": pool[n % len(pool)].answer}
        for n in range(prompts)
    ]
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tiny_settings(base_model, prompts, out, **changes) -> EvalSettings:
    """The tiny model's protocol: k=4, responses up to the tiny run's cap, quiet."""
    settings = EvalSettings(
        model=str(base_model),
        prompts=str(prompts),
        out=str(out),
        k=4,
        max_new_tokens=MAX_NEW_TOKENS,
        prompts_per_batch=3,
        reward_workers=1,
        progress=False,
    )
    return replace(settings, **changes)


class Interrupted(Exception):
    """A simulated kill of the evaluation."""


class CountingEngine:
    """A real engine whose generate calls are counted (and that fails after ``fail_after``)."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after = inner, fail_after
        self.calls, self.request_ids = 0, []

    def generate(self, requests):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Interrupted(f"killed before generate call {self.calls + 1}")
        self.calls += 1
        self.request_ids += [r.request_id for r in requests]
        return self.inner.generate(requests)


def counting_engine(settings: EvalSettings, fail_after: int | None = None) -> BuiltEngine:
    from megatron_fork.eval.model import open_model_source

    built = build_engine(settings, open_model_source(settings.model))
    return BuiltEngine(CountingEngine(built.engine, fail_after), built.description, built.close)


def sample_lines(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "samples.jsonl").read_text().splitlines()]


def by_seed(records) -> dict:
    return {r["seed"]: r["response"] for r in records}
