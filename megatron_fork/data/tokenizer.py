"""A tiny tokenizer for the synthetic task, built locally and saved as a standard
``tokenizer.json``, then loaded back through ``transformers.PreTrainedTokenizerFast``.

The file is an ordinary Hugging Face ``tokenizers`` file, so the code that loads it
(``load_tokenizer``) takes Qwen3's real ``tokenizer.json`` unchanged: the special-token names
default to Qwen3's (``<|endoftext|>`` pads, ``<|im_end|>`` ends a turn).

How it tokenizes: a word-level model over a fixed symbol list (``synthetic_task.TASK_SYMBOLS``:
digits, operators, ``\\boxed{``...). A regex pre-tokenizer isolates each symbol, every other
character becomes its own ``<|unk|>``, and the decoder concatenates pieces with nothing between
them, so ``decode(encode(text)) == text`` for any text made of the symbols. Ids are fixed by
order: the special tokens first (``SpecialTokens.ordered``), then the symbols as listed, so two
builds give the same ids and the same file bytes.
"""

import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from megatron_fork.data.synthetic_task import TASK_SYMBOLS
from megatron_fork.data.types import PromptExample

TOKENIZER_FILE = "tokenizer.json"
"""The file name Hugging Face model directories use."""


@dataclass(frozen=True)
class SpecialTokens:
    """Names of the special tokens (Qwen3's, so its real tokenizer.json loads the same way)."""

    pad: str = "<|endoftext|>"
    """Pads batches (Qwen3's pad token)."""
    eos: str = "<|im_end|>"
    """Ends a response: rollouts stop on it and the warm start learns to emit it."""
    unk: str = "<|unk|>"
    """Stands for any character outside the symbol list (Qwen3 has none: byte-level BPE)."""
    extra: tuple[str, ...] = ("<|im_start|>",)
    """Further specials reserved for a chat template; unused by the synthetic task."""

    @property
    def ordered(self) -> tuple[str, ...]:
        """Specials in id order: pad, eos, unk, then the extras."""
        return (self.pad, self.eos, self.unk, *self.extra)


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the special tokens in a loaded tokenizer."""

    pad: int
    """Id of ``SpecialTokens.pad``."""
    eos: int
    """Id of ``SpecialTokens.eos`` (the rollout's stop id)."""
    vocab_size: int
    """Number of ids the tokenizer produces, specials included: the tiny model's
    ``vocab_size`` (a real model such as Qwen3 may have more embedding rows than this)."""


def build_tokenizer(
    symbols: Sequence[str] = TASK_SYMBOLS, specials: SpecialTokens = SpecialTokens()
) -> Tokenizer:
    """A word-level ``tokenizers.Tokenizer`` with one id per special token and per symbol."""
    ordered = [*specials.ordered, *symbols]
    if len(set(ordered)) != len(ordered) or not all(ordered):
        raise ValueError(f"Tokenizer symbols and specials must be unique and non-empty: {ordered}")
    tokenizer = Tokenizer(
        models.WordLevel(vocab={t: i for i, t in enumerate(ordered)}, unk_token=specials.unk)
    )
    # Longest symbols first, so "\boxed{" wins over any one-character prefix; "[\s\S]" makes
    # every other character a piece of its own (one <|unk|> each, so lengths stay honest).
    longest_first = sorted(symbols, key=len, reverse=True)
    pattern = "|".join(re.escape(s) for s in longest_first) + r"|[\s\S]"
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in specials.ordered]
    )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: str | Path) -> Path:
    """Write ``directory/tokenizer.json`` (through a temporary sibling, so a crash never leaves
    half a file) and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TOKENIZER_FILE
    text = tokenizer.to_str(pretty=True) + "\n"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{TOKENIZER_FILE}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def build_and_save(
    directory: str | Path,
    symbols: Sequence[str] = TASK_SYMBOLS,
    specials: SpecialTokens = SpecialTokens(),
) -> Path:
    """Build the task's tokenizer and save it; returns the ``tokenizer.json`` path."""
    return save_tokenizer(build_tokenizer(symbols, specials), directory)


def load_tokenizer(
    path: str | Path, specials: SpecialTokens = SpecialTokens()
) -> PreTrainedTokenizerFast:
    """Load a ``tokenizer.json`` (or a directory holding one) as a ``PreTrainedTokenizerFast``.

    Works for this module's tiny tokenizer and for Qwen3's real file alike. The pad and eos
    tokens must exist in the file; the unk token is set only where the file has it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No tokenizer file at {path} (build one with build_and_save).")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(path), clean_up_tokenization_spaces=False
    )
    vocab = tokenizer.get_vocab()
    for name in (specials.pad, specials.eos):
        if name not in vocab:
            raise ValueError(f"{path}: special token {name!r} is not in the vocabulary.")
    tokenizer.pad_token = specials.pad
    tokenizer.eos_token = specials.eos
    if specials.unk in vocab:
        tokenizer.unk_token = specials.unk
    return tokenizer


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> SpecialTokenIds:
    """The pad and eos ids and vocabulary size of a tokenizer from ``load_tokenizer``."""
    return SpecialTokenIds(
        pad=tokenizer.pad_token_id, eos=tokenizer.eos_token_id, vocab_size=len(tokenizer)
    )


@dataclass(frozen=True)
class LengthStats:
    """Token lengths of examples: prompt, solution + end token, and the two together."""

    max_prompt: int
    """Longest prompt, in tokens."""
    max_solution: int
    """Longest reference solution, end token included."""
    max_total: int
    """Longest prompt + solution + end token: the sequence length the warm start needs."""
    mean_total: float
    """Mean of prompt + solution + end token."""


def length_stats(
    tokenizer: PreTrainedTokenizerFast, examples: Iterable[PromptExample]
) -> LengthStats:
    """Token lengths of examples with reference solutions (the end token counts once)."""
    prompts, solutions = [], []
    for example in examples:
        if example.solution is None:
            raise ValueError(f"Example {example.id} has no reference solution to measure.")
        prompts.append(len(tokenizer.encode(example.prompt)))
        solutions.append(len(tokenizer.encode(example.solution)) + 1)
    if not prompts:
        raise ValueError("length_stats needs at least one example.")
    totals = [p + s for p, s in zip(prompts, solutions, strict=True)]
    return LengthStats(
        max_prompt=max(prompts),
        max_solution=max(solutions),
        max_total=max(totals),
        mean_total=sum(totals) / len(totals),
    )
