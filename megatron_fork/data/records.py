"""Raw records from a data file, whatever its format: JSONL, a JSON array, or parquet.

Each record comes with where it was (``name:line`` or ``name:row N``) and its row number, so a
row parser can name it. Lines that are not UTF-8 or not JSON are counted in the ``LoadReport``
here and never reach the parser; everything else (including non-objects) is passed on.

Formats, chosen by suffix:
- ``.jsonl`` / ``.ndjson``: one JSON value per line; blank lines are counted, not rows.
- ``.json``: a JSON array of rows (a broken array raises ``DataFileError``); a file not
  starting with ``[`` is read as JSONL (many "``.json``" exports are really JSON lines).
- ``.parquet``: read with pyarrow in batches (nested columns come back as lists and dicts).
"""

import json
from collections.abc import Iterator
from pathlib import Path

from megatron_fork.data.report import DataFileError, LoadReport, SkipReason

JSONL_SUFFIXES = (".jsonl", ".ndjson")
"""Suffixes read line by line."""
PARQUET_BATCH_ROWS = 1024
"""Rows converted to Python at a time (bounds memory on large parquet files)."""

Record = tuple[str, int, object]
"""(where, 1-based row number, decoded value)."""


def iter_records(path: str | Path, report: LoadReport) -> Iterator[Record]:
    """Yield the records of a data file, counting unreadable lines in ``report``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from _jsonl_records(path, report)
    elif suffix == ".json":
        yield from _json_records(path, report)
    elif suffix == ".parquet":
        yield from _parquet_records(path)
    else:
        raise DataFileError(
            f"{path}: unknown data format {suffix!r}; expected .jsonl, .ndjson, .json or .parquet."
        )


def _jsonl_records(path: Path, report: LoadReport) -> Iterator[Record]:
    """JSON lines, read as bytes so one bad line's encoding cannot spoil the others."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path.name}:{number}"
            if not raw.strip():
                report.blank_lines += 1
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                report.skip(SkipReason.NOT_UTF8, where, str(e))
                continue
            try:
                value = json.loads(text.lstrip("\ufeff"))  # a BOM may open the first line
            except json.JSONDecodeError as e:
                report.skip(SkipReason.INVALID_JSON, where, str(e))
                continue
            yield where, number, value


def _json_records(path: Path, report: LoadReport) -> Iterator[Record]:
    """A JSON array of rows; a file that does not start with ``[`` is read as JSON lines. A
    broken array is one broken document (its rows cannot be told apart): it raises."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        text = ""  # JSON lines read line by line count each undecodable line instead
    if not text.lstrip().startswith("["):
        yield from _jsonl_records(path, report)
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFileError(
            f"{path}: a JSON array that does not parse (line {e.lineno}, column {e.colno}: "
            f"{e.msg}); fix it or convert the file to JSON lines"
        ) from e
    if not isinstance(value, list):
        yield from _jsonl_records(path, report)
        return
    for number, item in enumerate(value, start=1):
        yield f"{path.name}[{number - 1}]", number, item


def _parquet_records(path: Path) -> Iterator[Record]:
    """Parquet rows as dicts; a file pyarrow cannot read raises ``DataFileError``."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataFileError(f"{path}: reading parquet needs pyarrow (pip install pyarrow).") from e
    number = 0
    try:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                number += 1
                yield f"{path.name}:row {number}", number, row
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid/ArrowIOError subclass these
        raise DataFileError(f"{path}: not a readable parquet file ({e}).") from e
