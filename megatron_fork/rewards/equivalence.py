r"""Is a model's answer equal to the gold answer? Decided by the ``math-verify`` package
(``verify(parse(gold), parse(answer))``), with both sides given to it as ``\boxed{...}`` so they
go through the same LaTeX normalisation.

What counts as equal (math-verify 0.9.0's rules, adopted deliberately and pinned by tests):

- Numbers by value: ``\frac{1}{2}`` = ``\dfrac12`` = ``1/2`` = ``0.5``; ``\sqrt{8}`` =
  ``2\sqrt{2}``; decimals match to 6 places (``0.333333`` = 1/3, ``0.333`` does not), so a
  rounded answer is right only if rounded finely. Signs matter (``-3`` != ``3``).
- Intervals by their endpoints and openness (``[1,2)`` != ``(1,2)``); sets ignore order.
- Units and trailing words after a number are ignored: ``5\text{ cm}`` = ``5 cm`` = ``5``, and
  units are not compared with each other (``5\text{ m}`` = ``5\text{ cm}``). An answer that is
  text only (``\text{five}``, ``\text{5 cm}``) is not a number and does not equal ``5``.
- ``x = 2`` equals ``2`` (an assignment is reduced to its value).

This module runs inside the scorer's worker processes, never with math-verify's own signal-based
timeouts (they only work in a main thread): the time limit is the process pool's.
"""

from collections.abc import Callable

from megatron_fork.rewards.boxed import normalize_gold

VerifyFn = Callable[[str, str], bool]
"""(gold, answer) -> equal? Gold is raw dataset text; answer is the extracted box content. Must be
a module-level function (it is pickled into worker processes). Raises on a gold it cannot read."""


class GoldParseError(ValueError):
    """The gold answer could not be parsed: a data problem, counted as an error, not a miss."""


def _parse_boxed(latex: str) -> list:
    """math-verify's parse of ``\\boxed{latex}``; [] when nothing could be extracted."""
    from math_verify import parse  # imported here: only worker processes pay for it

    return parse(f"\\boxed{{{latex}}}", parsing_timeout=None)


def math_verify_equal(gold: str, answer: str) -> bool:
    """True when ``answer`` (box content) equals ``gold`` (plain text or LaTeX) by math-verify.

    Gold first: math-verify's comparison is not symmetric (assignments and relations are read
    relative to the gold). An answer math-verify cannot parse is simply not equal.
    """
    from math_verify import verify

    parsed_gold = _parse_boxed(normalize_gold(gold))
    if not parsed_gold:
        raise GoldParseError(f"math-verify could not parse the gold answer {gold!r}")
    parsed_answer = _parse_boxed(answer)
    if not parsed_answer:
        return False
    return bool(verify(parsed_gold, parsed_answer, timeout_seconds=None))
