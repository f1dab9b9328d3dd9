"""The templated fold task: the fold task's decisions inside mostly determined text.

Same rule as ``synthetic_task`` (from the first number ``v``, fold in each next ``n``: if
``v > n`` then ``v - n``, otherwise ``v + n``, modulo ``10 ** width``), but the chain of thought
is written the way a real one mostly is: it restates the problem, numbers its steps, restates
the two operands and the quantities still to use, and boxes the answer. With width 1::

    prompt:   8 3 6 4:
    solution: 8 3 6 4 = 1: 8>3: 8-3=5 = 5 6 4 = 2: 5<6: 5+6=1 = 1 4 = 3: 1<4: 1+4=5 = 5 \\boxed{5}

Why this shape (the paper's regime, at toy scale):

- Few decision points. Per step only two tokens are real decisions: the comparison (``>``,
  ``<`` or ``=``, which picks the branch) and the result (``width`` digits). Everything else is
  determined by the prompt and by what was already written: the step number, the separators,
  the restated operands (the previous result and the next prompt number), the operation (fixed
  by the comparison just written), the restated remaining quantities and the box. At width 1
  and 4 numbers, 6 of the 78 solution tokens (end token included) are decisions; the paper's
  Qwen3-8B chains of thought have about half their tokens below 0.01 nats and a 20% minority
  of "forking" tokens.
- Errors sit at the decisions. A warm start makes the model near-certain on the template
  quickly (it is the same for every prompt), while the comparison and the mod-10 tables are
  learned slowly, so the base is imperfect where a reasoning model is: at the forks.
- The existing tokenizer. The text uses only ``synthetic_task.TASK_SYMBOLS`` (digits, space,
  ``:``, ``>``, ``<``, ``=``, ``+``, ``-``, ``\\boxed{``, ``}``), so the warm start, rollouts and
  analysis tools tokenize it with ``tokenizer.build_tokenizer`` unchanged, and the fold task's
  vocabulary (hence its model and figures) is untouched.
- Honest held-out split, deterministic by seed: prompts are distinct draws from all
  ``(10 ** width) ** terms`` number lists (``random.Random(seed).sample``); held-out takes the
  first ``heldout_size``, train the next ``train_size``, so no prompt is in both.
"""

import random
import re
from dataclasses import dataclass

from megatron_fork.data.synthetic_task import TaskSplits
from megatron_fork.data.types import BOX_OPEN, PromptExample

SOURCE = "synthetic_templated"
"""``PromptExample.source`` of the task's examples."""
MAX_TERMS = 5
"""Most numbers in a prompt (the tiny model has 128 positions, prompt included)."""
MAX_WIDTH = 2
"""Widest number, in digits (values modulo 100 at width 2)."""


@dataclass(frozen=True)
class TemplatedTaskConfig:
    """Size and split of the templated fold task."""

    terms: int = 4
    """Numbers in a prompt; a prompt of k numbers takes k - 1 steps. 2 to ``MAX_TERMS``."""
    width: int = 1
    """Digits per number (zero-padded); arithmetic is modulo ``10 ** width``."""
    heldout_size: int = 500
    """Prompts in the held-out split."""
    train_size: int = 9000
    """Prompts in the train split (capped by the pool: all lists not held out)."""
    seed: int = 0
    """Seed of the draw that picks and orders the prompts: same seed, same splits."""

    def __post_init__(self):
        if not (2 <= self.terms <= MAX_TERMS and 1 <= self.width <= MAX_WIDTH):
            raise ValueError(
                f"TemplatedTaskConfig needs 2 <= terms <= {MAX_TERMS} and 1 <= width <= "
                f"{MAX_WIDTH}, got terms={self.terms}, width={self.width}."
            )
        if not 1 <= self.heldout_size < self.pool or self.train_size < 1:
            raise ValueError(
                f"TemplatedTaskConfig needs 1 <= heldout_size < {self.pool} (the pool) and "
                f"train_size >= 1, got heldout_size={self.heldout_size}, "
                f"train_size={self.train_size}."
            )

    @property
    def pool(self) -> int:
        """Number of distinct prompts: every list of ``terms`` numbers of ``width`` digits."""
        return (10**self.width) ** self.terms


def fold_step(value: int, number: int, modulus: int) -> tuple[str, str, int]:
    """One decision: (comparison, the operation it selects, new value modulo ``modulus``)."""
    if value > number:
        return ">", "-", (value - number) % modulus
    return ("<" if value < number else "="), "+", (value + number) % modulus


def _fmt(value: int, width: int) -> str:
    return str(value).zfill(width)


def format_prompt(numbers: tuple[int, ...], width: int = 1) -> str:
    """The prompt text: zero-padded numbers separated by spaces, closed by a colon."""
    return " ".join(_fmt(n, width) for n in numbers) + ":"


def solve(numbers: tuple[int, ...], width: int = 1) -> tuple[str, str]:
    """The templated chain of thought and the gold answer (unpadded) of a number list.

    ``restated = i: v?n: vOn=r = r rest...`` per step, each part joined by `` = ``:
    ``8 3 6 4 = 1: 8>3: 8-3=5 = 5 6 4 = ... = 5 \\boxed{5}``.
    """
    modulus = 10**width
    if len(numbers) < 2 or any(not 0 <= n < modulus for n in numbers):
        raise ValueError(f"solve needs at least two numbers in [0, {modulus}), got {numbers}.")
    parts = [" ".join(_fmt(n, width) for n in numbers)]
    value = numbers[0]
    for i, number in enumerate(numbers[1:], start=1):
        comparison, operation, result = fold_step(value, number, modulus)
        v, n, r = _fmt(value, width), _fmt(number, width), _fmt(result, width)
        parts.append(f"{i}: {v}{comparison}{n}: {v}{operation}{n}={r}")
        parts.append(" ".join([r, *(_fmt(m, width) for m in numbers[i + 1 :])]))
        value = result
    answer = str(value)
    return " = ".join(parts) + f" {BOX_OPEN}{answer}}}", answer


def make_example(numbers: tuple[int, ...], width: int = 1) -> PromptExample:
    """The task's ``PromptExample`` for one number list (its id is the padded numbers)."""
    solution, answer = solve(numbers, width)
    return PromptExample(
        id="templated-" + "".join(_fmt(n, width) for n in numbers),
        prompt=format_prompt(numbers, width),
        answer=answer,
        source=SOURCE,
        solution=solution,
    )


def _numbers(index: int, config: TemplatedTaskConfig) -> tuple[int, ...]:
    """The ``index``-th list of the pool (base ``10 ** width``, most significant first)."""
    modulus = 10**config.width
    digits = []
    for _ in range(config.terms):
        index, digit = divmod(index, modulus)
        digits.append(digit)
    return tuple(reversed(digits))


def build_templated_splits(config: TemplatedTaskConfig = TemplatedTaskConfig()) -> TaskSplits:
    """Draw distinct prompts with the seed; the first ``heldout_size`` are held out.

    Deterministic: ``random.Random(seed).sample`` over ``range(pool)`` is stable across
    platforms and Python versions for an integer seed.
    """
    count = min(config.pool, config.heldout_size + config.train_size)
    drawn = random.Random(config.seed).sample(range(config.pool), count)
    examples = [make_example(_numbers(i, config), config.width) for i in drawn]
    return TaskSplits(
        train=tuple(examples[config.heldout_size :]),
        heldout=tuple(examples[: config.heldout_size]),
    )


# A step's two decisions in the text: the comparison of ": v?n:" and the result of "vOn=r".
_COMPARISON = re.compile(r": \d+([<>=])\d+:")
_RESULT = re.compile(r"\d+[+-]\d+=(\d+)")


def decision_mask(pieces: list[str]) -> list[bool]:
    """Which tokens of a response (its decoded pieces, in order) are decision points: a
    comparison symbol, or a digit of a step's result. Everything else the template determines.

    Works on any response, also a wrong or malformed one: a token is a decision when its
    characters lie inside a comparison or result span of the concatenated text.
    """
    text = "".join(pieces)
    decided = [False] * (len(text) + 1)
    for pattern in (_COMPARISON, _RESULT):
        for match in pattern.finditer(text):
            for i in range(*match.span(1)):
                decided[i] = True
    mask, offset = [], 0
    for piece in pieces:
        mask.append(any(decided[offset : offset + len(piece)]))
        offset += len(piece)
    return mask
