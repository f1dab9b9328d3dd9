"""Prompts for the analysis tools: the synthetic task's held-out set (the demo's data) or a file
of prompts, read as a stream.

A prompt file is any file the project's loaders read (JSONL, JSON array, parquet) in the AIME
layout (``data/loaders.py``): a ``prompt`` (or ``problem``/``question``/``input``) field,
plain text or a chat list. Rows are parsed one at a time by the loaders' own row parser as
they are read (JSONL line by line, parquet 1024 rows at a time; a ``.json`` array is one
document and is read whole), so memory is bounded by the caller's chunk, not by the file.
Collecting needs no gold answer: a row without one is kept with ``NO_ANSWER``; the temperature
sweep needs answers and skips such rows (counted in the ``LoadReport``). Unlike
``load_examples``, ids are not checked for duplicates (that would hold every id in memory)."""

from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from megatron_fork.data.loaders import AIME_ANSWER_KEYS, parse_aime_row
from megatron_fork.data.prompt_sets import DataConfig, load_prompt_sets
from megatron_fork.data.records import iter_records
from megatron_fork.data.report import BadRow, LoadReport, SkipReason
from megatron_fork.data.types import PromptExample

SYNTHETIC = "synthetic"
NO_ANSWER = "?"
"""The answer of a prompt read without one (never scored)."""
_UNANSWERED = (SkipReason.MISSING_ANSWER, SkipReason.NO_FINAL_ANSWER)
_ANSWER_FIELDS = {*AIME_ANSWER_KEYS, "solution", "reward_model"}


def iter_prompt_file(
    path: str | Path, report: LoadReport, need_answers: bool = False
) -> Iterator[PromptExample]:
    """The usable rows of ``path`` as they are read; bad rows are counted in ``report``."""
    path = Path(path)
    for where, number, row in iter_records(path, report):
        try:
            if not isinstance(row, dict):
                raise BadRow(SkipReason.NOT_AN_OBJECT, f"a {type(row).__name__}, not an object")
            example = _parse(row, f"{path.stem}:{number}", path.stem, need_answers)
        except BadRow as bad:
            report.skip(bad.reason, where, bad.detail)
            continue
        report.keep()
        yield example


def _parse(row: dict, fallback_id: str, source: str, need_answers: bool) -> PromptExample:
    try:
        return parse_aime_row(row, fallback_id, source)
    except BadRow as bad:
        if need_answers or bad.reason not in _UNANSWERED:
            raise
    unanswered = {k: v for k, v in row.items() if k.lower() not in _ANSWER_FIELDS}
    return parse_aime_row({**unanswered, "answer": NO_ANSWER}, fallback_id, source)


def prompt_examples(
    prompt_set: str = SYNTHETIC,
    limit: int | None = None,
    need_answers: bool = False,
    data: DataConfig | None = None,
    report: LoadReport | None = None,
) -> Iterator[PromptExample]:
    """The first ``limit`` prompts (None: all) of ``prompt_set``: "synthetic" (the task's
    held-out split under ``data``, default ``DataConfig()``) or a prompt file, streamed."""
    if prompt_set == SYNTHETIC:
        examples = iter(load_prompt_sets(data or DataConfig()).eval)
    else:
        examples = iter_prompt_file(prompt_set, report or LoadReport(str(prompt_set)), need_answers)
    return islice(examples, limit)
