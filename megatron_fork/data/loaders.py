"""Loaders for the prompt datasets people have, into ``PromptExample``.

Two row layouts, each one parser (chosen from ``ROW_PARSERS``), on any file ``records`` reads
(JSONL, JSON array, parquet):

``dapo`` -- DAPO-Math-17K / verl layout::

    {"data_source": "math_dapo",
     "prompt": [{"role": "user", "content": "..."}],      # or a plain string
     "reward_model": {"ground_truth": "34", "style": "rule"},
     "extra_info": {"index": "..."}}

  The prompt text is the user turns joined by a blank line (all turns are kept in
  ``messages``); the id is ``extra_info.index``, else ``id``, else ``<file stem>:<row>``; the
  source is ``data_source``, else the ``source`` argument, else the file stem.

``aime`` -- eval sets such as AIME'24/'25 in their common exports. Keys are matched without
  regard to case, first match wins:

  - prompt: ``problem``, ``question``, ``prompt``, ``input`` (a string or a chat list);
  - answer: ``answer``, ``final_answer``, ``expected_answer``, ``ground_truth``, ``target``,
    then ``reward_model.ground_truth`` (DAPO-format eval sets), then ``solution``: the content
    of its last ``\\boxed{...}`` (a solution without one is skipped as ``no_final_answer``);
  - id: ``id``, ``idx``, ``problem_id``, ``unique_id``, ``index``, else ``<file stem>:<row>``;
  - source: ``data_source``, ``source``, else the ``source`` argument, else the file stem.

Answers may be strings or numbers (``204`` and ``204.0`` both become ``"204"``); booleans,
lists and dicts are ``wrong_type``. Bad rows are skipped and counted in the ``LoadReport``.
"""

import math
from collections.abc import Callable
from pathlib import Path

from megatron_fork.data.records import iter_records
from megatron_fork.data.report import BadRow, LoadReport, SkipReason
from megatron_fork.data.types import ChatMessage, PromptExample
from megatron_fork.rewards.boxed import extract_last_boxed

AIME_PROMPT_KEYS = ("problem", "question", "prompt", "input")
AIME_ANSWER_KEYS = ("answer", "final_answer", "expected_answer", "ground_truth", "target")
AIME_ID_KEYS = ("id", "idx", "problem_id", "unique_id", "index")


def load_dapo(
    path: str | Path, source: str | None = None
) -> tuple[list[PromptExample], LoadReport]:
    """DAPO-Math-17K style rows of a JSONL/JSON/parquet file -> (examples, report)."""
    return load_examples(path, "dapo", source)


def load_aime(
    path: str | Path, source: str | None = None
) -> tuple[list[PromptExample], LoadReport]:
    """AIME-style eval rows of a JSONL/JSON/parquet file -> (examples, report)."""
    return load_examples(path, "aime", source)


def load_examples(
    path: str | Path, layout: str, source: str | None = None
) -> tuple[list[PromptExample], LoadReport]:
    """Parse every row of ``path`` with the ``layout`` parser; bad rows are counted, not raised.

    ``source`` names the dataset where a row has no ``data_source`` (default: the file stem).
    Raises ``FileNotFoundError`` / ``DataFileError`` (path in the message) only when the file
    as a whole cannot be read.
    """
    if layout not in ROW_PARSERS:
        raise ValueError(f"Unknown row layout {layout!r}; choose one of {sorted(ROW_PARSERS)}.")
    parse = ROW_PARSERS[layout]
    path = Path(path)
    report = LoadReport(path=str(path))
    examples, seen_ids = [], set()
    for where, number, row in iter_records(path, report):
        try:
            if not isinstance(row, dict):
                raise BadRow(SkipReason.NOT_AN_OBJECT, f"a {type(row).__name__}, not an object")
            example = parse(row, f"{path.stem}:{number}", source or path.stem)
            if example.id in seen_ids:
                raise BadRow(SkipReason.DUPLICATE_ID, f"id {example.id!r} already seen")
        except BadRow as bad:
            report.skip(bad.reason, where, bad.detail)
            continue
        seen_ids.add(example.id)
        examples.append(example)
        report.keep()
    return examples, report


def parse_dapo_row(row: dict, fallback_id: str, default_source: str) -> PromptExample:
    """One DAPO-layout row -> ``PromptExample`` (raises ``BadRow``)."""
    prompt, messages = _prompt_text(row.get("prompt"), "prompt")
    reward_model = row.get("reward_model")
    if reward_model is None:
        raise BadRow(SkipReason.MISSING_ANSWER, "no reward_model field")
    if not isinstance(reward_model, dict):
        raise BadRow(SkipReason.WRONG_TYPE, "reward_model is not an object")
    answer = _answer_text(reward_model.get("ground_truth"), "reward_model.ground_truth")
    extra = row.get("extra_info")
    index = extra.get("index") if isinstance(extra, dict) else None
    return PromptExample(
        id=_id_text(index if index is not None else row.get("id"), fallback_id),
        prompt=prompt,
        answer=answer,
        source=_source_text(row.get("data_source"), default_source),
        messages=messages,
    )


def parse_aime_row(row: dict, fallback_id: str, default_source: str) -> PromptExample:
    """One AIME-style row -> ``PromptExample`` (raises ``BadRow``); keys as in the module doc."""
    keys = {k.lower(): k for k in reversed(list(row))}  # first spelling of a key wins
    pick = lambda names: next((keys[n] for n in names if n in keys), None)
    prompt_key = pick(AIME_PROMPT_KEYS)
    if prompt_key is None:
        raise BadRow(SkipReason.MISSING_PROMPT, f"none of the keys {AIME_PROMPT_KEYS}")
    prompt, messages = _prompt_text(row[prompt_key], prompt_key)
    id_key = pick(AIME_ID_KEYS)
    source_key = pick(("data_source", "source"))
    return PromptExample(
        id=_id_text(row[id_key] if id_key else None, fallback_id),
        prompt=prompt,
        answer=_aime_answer(row, pick(AIME_ANSWER_KEYS), pick(("solution",))),
        source=_source_text(row[source_key] if source_key else None, default_source),
        messages=messages,
    )


ROW_PARSERS: dict[str, Callable[[dict, str, str], PromptExample]] = {
    "dapo": parse_dapo_row,
    "aime": parse_aime_row,
}
"""Row layout name -> parser(row, fallback id, default source)."""


def _aime_answer(row: dict, answer_key: str | None, solution_key: str | None) -> str:
    """The gold answer of an AIME-style row: an answer key, a reward_model, or a boxed solution."""
    if answer_key is not None and row[answer_key] is not None:
        return _answer_text(row[answer_key], answer_key)
    reward_model = row.get("reward_model")
    if isinstance(reward_model, dict) and reward_model.get("ground_truth") is not None:
        return _answer_text(reward_model["ground_truth"], "reward_model.ground_truth")
    if solution_key is None or row[solution_key] is None:
        raise BadRow(SkipReason.MISSING_ANSWER, f"none of {AIME_ANSWER_KEYS} nor a solution")
    solution = row[solution_key]
    if not isinstance(solution, str):
        raise BadRow(SkipReason.WRONG_TYPE, f"{solution_key} is a {type(solution).__name__}")
    boxed = extract_last_boxed(solution, max_scan_chars=len(solution))
    if boxed is None:
        raise BadRow(SkipReason.NO_FINAL_ANSWER, f"{solution_key} has no \\boxed{{}} answer")
    return _answer_text(boxed, solution_key)


def _prompt_text(value: object, key: str) -> tuple[str, tuple[ChatMessage, ...]]:
    """(prompt text, chat messages) of a prompt given as a string or a chat list."""
    if value is None:
        raise BadRow(SkipReason.MISSING_PROMPT, f"no {key} field")
    if isinstance(value, str):
        text, messages = value, ()
    elif isinstance(value, list):
        messages = tuple(_chat_message(m, key) for m in value)
        user_turns = [m.content for m in messages if m.role == "user"]
        if not user_turns:
            raise BadRow(SkipReason.MISSING_PROMPT, f"{key} has no user turn")
        text = "\n\n".join(user_turns)
    else:
        raise BadRow(SkipReason.WRONG_TYPE, f"{key} is a {type(value).__name__}")
    if not text.strip():
        raise BadRow(SkipReason.EMPTY_PROMPT, f"{key} text is empty")
    return text, messages


def _chat_message(value: object, key: str) -> ChatMessage:
    """One ``{"role": str, "content": str}`` turn of a chat prompt."""
    if not isinstance(value, dict):
        raise BadRow(SkipReason.WRONG_TYPE, f"a turn of {key} is not an object")
    role, content = value.get("role"), value.get("content")
    if not isinstance(role, str) or not isinstance(content, str):
        raise BadRow(SkipReason.WRONG_TYPE, f"a turn of {key} lacks a string role or content")
    return ChatMessage(role=role, content=content)


def _answer_text(value: object, key: str) -> str:
    """A gold answer as text: strings as they are (stripped), integral numbers without ".0"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise BadRow(SkipReason.MISSING_ANSWER, f"no {key}")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadRow(SkipReason.WRONG_TYPE, f"{key} is a {type(value).__name__}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        raise BadRow(SkipReason.EMPTY_ANSWER, f"{key} is empty")
    return text


def _id_text(value: object, fallback: str) -> str:
    """A row id as text; rows without one get ``<file stem>:<row>``."""
    if value is None:
        return fallback
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRow(SkipReason.WRONG_TYPE, f"id is a {type(value).__name__}")
    return str(value)


def _source_text(value: object, default: str) -> str:
    """The row's dataset name, or the default where the row has none."""
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadRow(SkipReason.WRONG_TYPE, f"data_source is a {type(value).__name__}")
    return value
