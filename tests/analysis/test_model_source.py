"""A model source's config and tokenizer read and checked without weights: a tokenizer of
another family is refused even when it is smaller than the model's vocabulary (its ids for the
config's special tokens are ordinary pieces, or its ids pass the embedding rows), and a Megatron
checkpoint without ``hf/`` is refused by name."""

import json
import re

import pytest
from tokenizers import AddedToken, Tokenizer, models
from transformers import Qwen3Config

from megatron_fork.analysis.model_source import read_source, read_vocabulary
from megatron_fork.data.tokenizer import SpecialTokens, build_and_save

VOCAB = 23  # the tiny model's: 4 specials (ids 0-3) + 19 task symbols (ids 4-22)


def _folder(path, tokenizer_ids=None, **config):
    """config.json of a tiny Qwen3 (pad 0 and eos 1, as the warm start writes) and a
    tokenizer.json: the project's own, or one whose ids are ``tokenizer_ids``."""
    path.mkdir()
    settings = {"vocab_size": VOCAB, "pad_token_id": 0, "eos_token_id": 1, **config}
    Qwen3Config(**settings).save_pretrained(path)
    if tokenizer_ids is None:
        build_and_save(path)
    else:
        tokenizer = Tokenizer(models.WordLevel(vocab=tokenizer_ids, unk_token="<|unk|>"))
        specials = SpecialTokens().ordered
        tokenizer.add_special_tokens([AddedToken(t, special=True) for t in specials])
        tokenizer.save(str(path / "tokenizer.json"))
    return path


def _family(first_special: int) -> dict:
    """Another family: the digits first (ids 0-9), Qwen's special names from ``first_special``
    on: 14 tokens, fewer than the model's 23 rows."""
    ids = {str(d): d for d in range(10)}
    ids.update({t: first_special + i for i, t in enumerate(SpecialTokens().ordered)})
    return ids


def test_the_projects_tokenizer_fits(tmp_path):
    config, tokenizer = read_source(_folder(tmp_path / "own", eos_token_id=[1, 0]))
    assert config.vocab_size == VOCAB and len(tokenizer) == VOCAB
    assert read_vocabulary(tmp_path / "own")["vocab_size"] == VOCAB


def test_a_smaller_tokenizer_of_another_family_is_refused(tmp_path):
    # Its specials at ids 10-13 fit the 23 rows, but the config's pad id 0 is the digit "0".
    other = _folder(tmp_path / "other", _family(10))
    with pytest.raises(ValueError, match="other: config.json's pad_token_id 0 is '0' in the tok"):
        read_source(other)
    # The eos id is checked as well (pad unset here): id 1 is the digit "1".
    eos = _folder(tmp_path / "eos", _family(10), pad_token_id=None)
    with pytest.raises(ValueError, match="eos_token_id 1 is '1' in the tokenizer, not one of its"):
        read_source(eos)
    # And bos when set: the own tokenizer's id 5 is the symbol "1".
    bos = _folder(tmp_path / "bos", bos_token_id=5)
    with pytest.raises(ValueError, match="bos_token_id 5 is '1' in the tokenizer"):
        read_source(bos)


def test_special_ids_past_the_embedding_rows_are_refused(tmp_path):
    # 14 tokens (fewer than 23), but the specials sit at ids 30-33: no embedding rows there.
    high = _folder(tmp_path / "high", _family(30), pad_token_id=None, eos_token_id=None)
    message = re.escape("token '<|im_start|>' has id 33, the model has 23 embedding rows")
    with pytest.raises(ValueError, match=message):
        read_source(high)


def test_a_megatron_checkpoint_without_hf_is_refused(tmp_path):
    checkpoint = tmp_path / "step_00000010"
    checkpoint.mkdir()
    (checkpoint / ".metadata").write_bytes(b"")  # what Megatron's distributed checkpoint writes
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": 10}))
    with pytest.raises(ValueError, match="step_00000010: a Megatron checkpoint without hf/"):
        read_source(checkpoint)
    with pytest.raises(FileNotFoundError, match="nowhere: no model folder there"):
        read_source(tmp_path / "nowhere")
