"""The task's tokenizer: built locally, saved as tokenizer.json, loaded through transformers."""

import pytest

from megatron_fork.data.synthetic_task import TASK_SYMBOLS, SyntheticTaskConfig, build_splits
from megatron_fork.data.tokenizer import (
    SpecialTokens,
    build_and_save,
    length_stats,
    load_tokenizer,
    special_token_ids,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(build_and_save(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def splits():
    return build_splits(SyntheticTaskConfig())


def test_special_token_ids(tokenizer):
    ids = special_token_ids(tokenizer)
    assert (ids.pad, ids.eos, ids.vocab_size) == (0, 1, 4 + len(TASK_SYMBOLS))
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.convert_tokens_to_ids(["<|unk|>", "<|im_start|>", "0"]) == [2, 3, 4]


def test_ids_are_stable_across_builds(tmp_path):
    first = build_and_save(tmp_path / "a")
    second = build_and_save(tmp_path / "b")
    assert first.name == "tokenizer.json"
    assert first.read_bytes() == second.read_bytes()
    # Pinned, so a reordered symbol list (which would orphan saved checkpoints) fails here.
    vocab = load_tokenizer(first).get_vocab()
    assert [vocab[s] for s in ("9", " ", "\\boxed{", "}")] == [13, 14, 21, 22]


def test_round_trip_on_task_text(tokenizer, splits):
    examples = splits.heldout + splits.train[:500]
    for example in examples:
        text = example.prompt + example.solution
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids
    # One token each for the pieces the model must emit as units.
    assert len(tokenizer.encode("\\boxed{7}")) == 3


def test_eos_round_trip_and_skip(tokenizer):
    ids = tokenizer.encode("1<2:1+2=3 \\boxed{3}<|im_end|>")
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "1<2:1+2=3 \\boxed{3}"


def test_unknown_characters_are_one_unk_each(tokenizer):
    ids = tokenizer.encode("ab\n7")
    assert ids == [tokenizer.unk_token_id] * 3 + [tokenizer.convert_tokens_to_ids("7")]


def test_length_stats_fit_the_budget(tokenizer, splits):
    stats = length_stats(tokenizer, splits.heldout)
    assert (stats.max_prompt, stats.max_solution, stats.max_total) == (8, 34, 42)
    assert stats.max_total <= 48
    for terms in (2, 3):  # the module's formula: 12 * terms - 6 (end token included)
        config = SyntheticTaskConfig(min_terms=terms, max_terms=terms, heldout_size=20)
        assert length_stats(tokenizer, build_splits(config).heldout).max_total == 12 * terms - 6


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load_tokenizer(tmp_path / "missing")
    path = build_and_save(tmp_path / "other", specials=SpecialTokens(eos="<eos>", extra=()))
    with pytest.raises(ValueError, match="<\\|im_end\\|>"):
        load_tokenizer(path)
    assert special_token_ids(load_tokenizer(path, SpecialTokens(eos="<eos>", extra=()))).eos == 1


def test_duplicate_symbols_rejected(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        build_and_save(tmp_path, symbols=("1", "1"))
