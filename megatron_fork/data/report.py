"""What a loader did with a file: rows kept, rows skipped and why.

A bad row never stops a load and is never dropped silently: it is skipped, counted under one
``SkipReason``, and its first few locations are kept so the user can open the file at the line.
Errors about the file as a whole (missing, not parquet, unknown format) raise ``DataFileError``
or ``FileNotFoundError`` with the file's path, since no row of it can be read.
"""

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum


class SkipReason(StrEnum):
    """Why a row was skipped. The values are the keys of ``LoadReport.skipped``."""

    NOT_UTF8 = "not_utf8"
    """A JSONL line whose bytes are not valid UTF-8."""
    INVALID_JSON = "invalid_json"
    """A JSONL line that does not parse as JSON."""
    NOT_AN_OBJECT = "not_an_object"
    """Valid JSON, but not an object (a list, a number, a string...)."""
    MISSING_PROMPT = "missing_prompt"
    """No prompt field (or null, or a chat with no user turn)."""
    MISSING_ANSWER = "missing_answer"
    """No gold-answer field (or null / NaN)."""
    WRONG_TYPE = "wrong_type"
    """A field of the wrong type (a dict prompt, a list answer, a message without content...)."""
    EMPTY_PROMPT = "empty_prompt"
    """The prompt text is empty or only whitespace."""
    EMPTY_ANSWER = "empty_answer"
    """The gold answer is empty or only whitespace."""
    NO_FINAL_ANSWER = "no_final_answer"
    """Only a worked solution was given, and it has no ``\\boxed{}`` final answer."""
    DUPLICATE_ID = "duplicate_id"
    """The row's id was already taken by an earlier row of the file (the first one is kept)."""


class DataFileError(ValueError):
    """A data file that cannot be read at all (its path is in the message)."""


class BadRow(Exception):
    """Raised by a row parser; the loader catches it and counts the row under ``reason``."""

    def __init__(self, reason: SkipReason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


MAX_EXAMPLES_PER_REASON = 3
"""Locations kept per skip reason (enough to find the problem, bounded for huge files)."""


@dataclass
class LoadReport:
    """Counts of one load. ``rows_read == rows_kept + sum(skipped.values())``."""

    path: str
    """The file that was loaded."""
    rows_read: int = 0
    """Rows (JSONL lines that are not blank, parquet rows, JSON array items) looked at."""
    rows_kept: int = 0
    """Rows that became examples."""
    blank_lines: int = 0
    """Empty JSONL lines: not rows, so neither kept nor skipped (counted to be visible)."""
    skipped: Counter = field(default_factory=Counter)
    """Skipped rows per ``SkipReason`` value."""
    examples: dict = field(default_factory=dict)
    """Per reason, the first ``MAX_EXAMPLES_PER_REASON`` ``"<where>: <detail>"`` strings."""

    def keep(self) -> None:
        """Count a row that became an example."""
        self.rows_read += 1
        self.rows_kept += 1

    def skip(self, reason: SkipReason, where: str, detail: str) -> None:
        """Count a skipped row and remember where it was (for the first few of each reason)."""
        self.rows_read += 1
        self.skipped[reason.value] += 1
        kept = self.examples.setdefault(reason.value, [])
        if len(kept) < MAX_EXAMPLES_PER_REASON:
            kept.append(f"{where}: {detail}")

    @property
    def rows_skipped(self) -> int:
        """Total rows skipped, all reasons together."""
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line for logs: kept/read, then the skipped counts by reason."""
        line = f"{self.path}: kept {self.rows_kept} of {self.rows_read} rows"
        if self.skipped:
            reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items()))
            line += f"; skipped {self.rows_skipped} ({reasons})"
        if self.blank_lines:
            line += f"; {self.blank_lines} blank line(s)"
        return line
