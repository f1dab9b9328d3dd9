r"""Final-answer extraction: the content of the LAST ``\boxed{...}`` (or ``\fbox{...}``) of a
response, and the normalisation of a gold answer to the same bare form.

Rules (each one chosen so that a reward cannot be gamed and a huge output stays cheap):

- Only the last ``max_scan_chars`` characters are examined. The final answer of a chain of
  thought sits at its end, and a capped tail keeps extraction linear and bounded for any output
  size (a 2 MB response costs the same as a 10 kB one). A box that starts before the tail is not
  seen.
- The box that OPENS last decides. ``\boxed{3} ... \boxed{4}`` answers 4: a model that boxes
  twice is graded on its final word. If that last box never closes (a truncated response, or
  unbalanced braces) there is no answer: an earlier, complete box is not used, because the model
  had moved on from it.
- ``\boxed{...}`` and ``\fbox{...}``, with optional whitespace before the brace (``\boxed {x}``).
  ``\boxedx`` (another macro) is not a box; neither is the brace-less ``\boxed 5``.
- Braces balance; ``\{`` and ``\}`` are escaped (literal set braces), so ``\boxed{\{1,2\}}``
  yields ``\{1,2\}``.
- Empty or whitespace-only content, or content longer than ``max_answer_chars``, is no answer
  (the latter keeps an adversarial mega-box away from the symbolic parser).
"""

import re

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
"""``\boxed`` or ``\fbox``, optional whitespace, then the opening brace (part of the match)."""

_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
"""Outer delimiters stripped from a gold answer given as inline or display LaTeX."""


def _last_box_start(tail: str) -> int | None:
    """Index just past the opening brace of the last box in ``tail``; None if there is none."""
    start = None
    for match in _BOX_OPEN.finditer(tail):
        start = match.end()
    return start


def _balanced_content_end(text: str, start: int) -> int | None:
    """Index of the brace that closes the group opened just before ``start``; None if unclosed.

    One pass; a backslash skips the next character, so escaped braces never count.
    """
    depth = 1
    i, n = start, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_last_boxed(
    text: str, max_scan_chars: int = 10_000, max_answer_chars: int = 1_000
) -> str | None:
    """The stripped content of the last box of ``text`` (rules in the module docstring), or None.

    ``max_scan_chars``: how many trailing characters are examined. ``max_answer_chars``: longest
    content accepted.
    """
    tail = text[-max_scan_chars:] if max_scan_chars > 0 else ""
    start = _last_box_start(tail)
    if start is None:
        return None
    end = _balanced_content_end(tail, start)
    if end is None:
        return None
    content = tail[start:end].strip()
    if not content or len(content) > max_answer_chars:
        return None
    return content


def _strip_math_delimiters(text: str) -> str:
    """``$x$``, ``$$x$$``, ``\\(x\\)`` and ``\\[x\\]`` -> ``x``; anything else unchanged."""
    for left, right in _MATH_DELIMITERS:
        if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
            return text[len(left) : len(text) - len(right)].strip()
    return text


def normalize_gold(gold: str) -> str:
    r"""A gold answer as bare LaTeX, ready to be boxed: ``0.5``, ``$\frac12$``, ``\(\frac12\)``
    and ``\boxed{\frac12}`` all become the box content.

    Gold answers come from datasets, not from a model, so they are trusted to be short: the whole
    string is examined. A gold with a box is reduced to its last box's content.
    """
    text = gold.strip()
    if _BOX_OPEN.search(text):
        boxed = extract_last_boxed(text, max_scan_chars=len(text), max_answer_chars=len(text))
        return boxed if boxed is not None else text
    return _strip_math_delimiters(text)
