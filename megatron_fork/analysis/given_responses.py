"""Responses to score instead of generating them, as chunks of ``Sample``s: from a token table
another model wrote (the SAME responses, token for token, for comparing checkpoints), or from a
file of ``{"prompt": str, "response": str[, "id": ...]}`` rows (JSONL, JSON, parquet: whatever
``data/records`` reads), encoded with the scoring model's tokenizer.

Both stream: a token table one row group (one chunk of whole samples) at a time, a file one row
at a time into chunks of ``chunk`` samples. Rows without a prompt or a response are skipped and
counted in the ``LoadReport``; a repeated ``id`` is refused (a sample's rows are found by its id,
so two samples of one id would merge); the ids seen are held, one entry per row."""

from collections.abc import Iterator
from pathlib import Path

from megatron_fork.analysis.token_table import iter_row_groups
from megatron_fork.data.records import iter_records
from megatron_fork.data.report import BadRow, LoadReport, SkipReason
from megatron_fork.rollout.types import FinishReason, Sample

GIVEN_VERSION = -1
"""``Sample.weight_version`` of a response the analysis did not generate."""
_COLUMNS = ["sample", "position", "token_id", "logprob", "prompt_ids"]


def samples_from_table(path: str | Path) -> Iterator[list[Sample]]:
    """The table's samples, one chunk per row group, in the table's order."""
    for group in iter_row_groups(path, _COLUMNS):
        rows = group.to_pydict()
        samples, start = [], 0
        for end in range(1, len(rows["sample"]) + 1):
            if end == len(rows["sample"]) or rows["sample"][end] != rows["sample"][start]:
                samples.append(_table_sample(path, rows, start, end))
                start = end
        yield samples


def _table_sample(path, rows: dict, start: int, end: int) -> Sample:
    name = rows["sample"][start]
    if rows["position"][start:end] != list(range(end - start)):
        raise ValueError(f"{path}: sample {name!r} is not one run of positions 0..n-1")
    prompt_ids = rows["prompt_ids"][start]
    if not prompt_ids:
        raise ValueError(
            f"{path}: sample {name!r} has no prompt ids (a table written before they were "
            "recorded): collect it again"
        )
    return Sample(
        request_id=name,
        prompt_ids=tuple(prompt_ids),
        output_ids=tuple(rows["token_id"][start:end]),
        output_logprobs=tuple(rows["logprob"][start:end]),
        finish_reason=FinishReason("stop"),
        weight_version=GIVEN_VERSION,
    )


def samples_from_file(
    path: str | Path, tokenizer, report: LoadReport, chunk: int = 32
) -> Iterator[list[Sample]]:
    """Chunks of at most ``chunk`` samples from a file of prompt/response rows."""
    samples, seen = [], {}
    for where, number, row in iter_records(path, report):
        try:
            sample = _file_sample(row, number, tokenizer)
        except BadRow as bad:
            report.skip(bad.reason, where, bad.detail)
            continue
        if sample.request_id in seen:
            raise ValueError(
                f"{path}: id {sample.request_id!r} of {where} was already taken by "
                f"{seen[sample.request_id]}: every response needs its own id"
            )
        seen[sample.request_id] = where
        samples.append(sample)
        report.keep()
        if len(samples) == chunk:
            yield samples
            samples = []
    if samples:
        yield samples


def _file_sample(row, number: int, tokenizer) -> Sample:
    if not isinstance(row, dict):
        raise BadRow(SkipReason.NOT_AN_OBJECT, f"a {type(row).__name__}, not an object")
    ids = {}
    for key, reason in (("prompt", SkipReason.MISSING_PROMPT), ("response", SkipReason.WRONG_TYPE)):
        text = row.get(key)
        if not isinstance(text, str):
            raise BadRow(reason, f"{key} is {type(text).__name__}, not a string")
        ids[key] = tuple(tokenizer.encode(text, add_special_tokens=False))
        if not ids[key]:
            raise BadRow(SkipReason.EMPTY_PROMPT, f"{key} encodes to no tokens")
    return Sample(
        request_id=str(row.get("id", f"r{number}")),
        prompt_ids=ids["prompt"],
        output_ids=ids["response"],
        output_logprobs=(0.0,) * len(ids["response"]),
        finish_reason=FinishReason("stop"),
        weight_version=GIVEN_VERSION,
    )
