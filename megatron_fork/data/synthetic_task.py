"""The synthetic verifiable task: a compare-and-fold chain over digits, modulo 10.

A prompt is a list of digits, ``8 3 6 4:``. Starting from the first digit ``v``, each next digit
``n`` is folded in by a branch: if ``v > n`` then ``v - n``, otherwise ``v + n`` (mod 10). The
reference chain of thought writes each step as the comparison, the operation it selects, and the
result, then boxes the last value::

    8 3 6 4:8>3:8-3=5 5<6:5+6=1 1<4:1+4=5 \\boxed{5}

Why this shape:

- Genuine decision points. At each step the model must compare two digits (``>``, ``<`` or
  ``=``), which picks the branch (``-`` or ``+``), then compute the result (a 10 x 10 table mod
  10). Those tokens are where a partly trained model is uncertain; the copied operands and the
  separators are near-deterministic, as most chain-of-thought tokens are in the paper.
- Partial accuracy after supervised training, room for RL. The answer is right only if every
  step is, so a per-step accuracy ``p`` gives about ``p ** (terms - 1)``: a short warm start
  leaves ``p`` below 1, and the sequence-level reward of RL sharpens every step at once.
- Tiny. Ten digits and nine symbols (``TASK_SYMBOLS``); a prompt of k terms plus its solution
  and an end token is ``12 * k - 6`` tokens with ``tokenizer.build_tokenizer`` (42 at k = 4).
- Answers are not uniform (subtraction favours small values): with 4 terms the commonest
  answer, 1, is 15% of prompts, which is what always guessing it would score.
- Honest held-out split. All ``10 ** k`` digit lists are enumerated, shuffled with the seed, and
  the held-out split takes the first ``heldout_size``; train gets the rest, so no prompt is in
  both. Every single step ``(v, n)`` occurs in training, so held-out accuracy measures whether
  the rule was learned, not whether prompts were memorised.
"""

import itertools
import random
from dataclasses import dataclass

from megatron_fork.data.types import BOX_OPEN, PromptExample

TASK_SYMBOLS = (
    *"0123456789",
    " ",
    ":",
    ">",
    "<",
    "=",
    "+",
    "-",
    BOX_OPEN,
    "}",
)
"""Every piece of text the task writes, in the order the tokenizer numbers them."""
MAX_TERMS = 6
"""Longest digit list allowed: the splits enumerate all ``10 ** k`` lists (a million at 6)."""
SOURCE = "synthetic_fold"
"""``PromptExample.source`` of the task's examples."""

# Comparison symbol -> (operation it selects, the operation mod 10). Chosen from this table.
_BRANCHES = {
    ">": ("-", lambda v, n: (v - n) % 10),
    "<": ("+", lambda v, n: (v + n) % 10),
    "=": ("+", lambda v, n: (v + n) % 10),
}


@dataclass(frozen=True)
class SyntheticTaskConfig:
    """Size and split of the compare-and-fold task."""

    min_terms: int = 4
    """Fewest digits in a prompt; a prompt of k digits takes k - 1 steps. At least 2."""
    max_terms: int = 4
    """Most digits in a prompt, at most ``MAX_TERMS``. Each length contributes all 10 ** k
    digit lists to the pool, so longer lists dominate a mixed pool."""
    heldout_size: int = 500
    """Prompts in the held-out split, drawn uniformly from the pool; train gets the rest."""
    seed: int = 0
    """Seed of the shuffle that splits the pool: the same seed gives the same splits."""

    def __post_init__(self):
        if not 2 <= self.min_terms <= self.max_terms <= MAX_TERMS:
            raise ValueError(
                f"SyntheticTaskConfig needs 2 <= min_terms <= max_terms <= {MAX_TERMS}, "
                f"got min_terms={self.min_terms}, max_terms={self.max_terms}."
            )
        pool = pool_size(self.min_terms, self.max_terms)
        if not 1 <= self.heldout_size < pool:
            raise ValueError(
                f"SyntheticTaskConfig.heldout_size must be in [1, {pool - 1}] so both splits "
                f"are non-empty ({pool} prompts in the pool), got {self.heldout_size}."
            )


@dataclass(frozen=True)
class TaskSplits:
    """Disjoint train and held-out examples of one configuration."""

    train: tuple[PromptExample, ...]
    """For the warm start and RL."""
    heldout: tuple[PromptExample, ...]
    """For evaluation only; no prompt here is in ``train``."""


def pool_size(min_terms: int, max_terms: int) -> int:
    """Number of distinct prompts with between ``min_terms`` and ``max_terms`` digits."""
    return sum(10**k for k in range(min_terms, max_terms + 1))


def fold_step(value: int, digit: int) -> tuple[str, str, int]:
    """One decision of the chain: (comparison symbol, operation it selects, new value)."""
    comparison = ">" if value > digit else "<" if value < digit else "="
    operation, apply = _BRANCHES[comparison]
    return comparison, operation, apply(value, digit)


def format_prompt(digits: tuple[int, ...]) -> str:
    """The prompt text: digits separated by spaces, closed by a colon (``8 3 6 4:``)."""
    return " ".join(str(d) for d in digits) + ":"


def solve(digits: tuple[int, ...]) -> tuple[str, str]:
    """The reference chain of thought and the gold answer of a digit list.

    Each step is ``v?n:vOn=r`` (comparison, selected operation, result), steps are separated by
    a space, and the last value is boxed: ``8>3:8-3=5 5<6:5+6=1 1<4:1+4=5 \\boxed{5}``.
    """
    if len(digits) < 2 or any(not 0 <= d <= 9 for d in digits):
        raise ValueError(f"solve needs at least two digits in 0..9, got {digits}.")
    value = digits[0]
    steps = []
    for digit in digits[1:]:
        comparison, operation, result = fold_step(value, digit)
        steps.append(f"{value}{comparison}{digit}:{value}{operation}{digit}={result}")
        value = result
    answer = str(value)
    return " ".join(steps) + f" {BOX_OPEN}{answer}}}", answer


def make_example(digits: tuple[int, ...]) -> PromptExample:
    """The task's ``PromptExample`` for one digit list (its id is the digits themselves)."""
    solution, answer = solve(digits)
    return PromptExample(
        id="fold-" + "".join(str(d) for d in digits),
        prompt=format_prompt(digits),
        answer=answer,
        source=SOURCE,
        solution=solution,
    )


def build_splits(config: SyntheticTaskConfig = SyntheticTaskConfig()) -> TaskSplits:
    """Enumerate every digit list of the configured lengths, shuffle with the seed, and split.

    Deterministic: the same config gives the same examples in the same order, on any machine
    (``random.Random`` with an integer seed is stable across platforms and Python versions).
    """
    pool = [
        digits
        for k in range(config.min_terms, config.max_terms + 1)
        for digits in itertools.product(range(10), repeat=k)
    ]
    random.Random(config.seed).shuffle(pool)
    heldout = tuple(make_example(d) for d in pool[: config.heldout_size])
    train = tuple(make_example(d) for d in pool[config.heldout_size :])
    return TaskSplits(train=train, heldout=heldout)
