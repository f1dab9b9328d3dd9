"""A model source (Hugging Face folder or Megatron checkpoint) opened for analysis: its config,
its tokenizer (checked against the model's config: ``check_tokenizer``), the frozen Megatron
model at this run's layout (the trainer's scoring path), and on demand a torch rollout engine on
rank 0 holding the same weights (synced through the trainer's one mapping). ``read_source``
reads and checks the config and tokenizer alone, so bad sources are refused before any weights
load; ``checkpoint_step`` is the training step a trainer checkpoint was saved at.

Entropies of two models can only be compared over one vocabulary: ``vocabulary_of`` names it
(embedding rows + a hash of the tokenizer's token -> id map) and ``check_same_vocabulary``
refuses two that differ, naming both."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from transformers import Qwen3ForCausalLM

from megatron_fork.data.tokenizer import SpecialTokenIds, load_tokenizer, special_token_ids
from megatron_fork.models.hf_mapping import Qwen3Layout
from megatron_fork.parallel.rank0 import made_on_rank0
from megatron_fork.rollout.torch_engine import TorchRolloutEngine
from megatron_fork.trainer.actor import build_reference_model, read_model_config
from megatron_fork.trainer.checkpoint import (
    HF_METADATA_DIR,
    TRAINER_STATE_FILE,
    hf_metadata_dir,
    is_megatron_checkpoint,
)
from megatron_fork.trainer.trainer_config import ParallelConfig
from megatron_fork.trainer.weight_sync import sync_weights


@dataclass
class AnalysisModel:
    source: str
    hf_config: object
    tokenizer: object
    ids: SpecialTokenIds
    model: object
    """This rank's part of the frozen Megatron model."""

    @property
    def vocabulary(self) -> dict:
        return vocabulary_of(self.hf_config, self.tokenizer)

    def rollout_engine(self, max_batch_size: int = 256) -> TorchRolloutEngine | None:
        """Collective over the model's ranks: a torch engine with this model's weights on
        global rank 0, None on the others (a failure to build it is raised on every rank)."""
        engine = made_on_rank0(
            lambda: TorchRolloutEngine(
                Qwen3ForCausalLM(self.hf_config).float(), max_batch_size, pad_token_id=self.ids.pad
            )
        )
        sync_weights(self.model, Qwen3Layout.from_hf_config(self.hf_config), engine, version=0)
        return engine


def vocabulary_of(hf_config, tokenizer) -> dict:
    """What two models must share for their entropies to be compared token by token."""
    mapping = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
    return {
        "vocab_size": int(hf_config.vocab_size),
        "tokenizer_tokens": len(tokenizer),
        "tokenizer_sha256": hashlib.sha256(mapping).hexdigest(),
    }


def read_source(source: str):
    """(Hugging Face config, tokenizer) of a model source, checked to belong together
    (``check_tokenizer``), without its weights; errors name the source."""
    path = Path(source)
    if not path.is_dir():
        raise FileNotFoundError(f"{source}: no model folder there")
    if is_megatron_checkpoint(path) and not (path / HF_METADATA_DIR).is_dir():
        raise ValueError(
            f"{source}: a Megatron checkpoint without {HF_METADATA_DIR}/ (the config.json and "
            "tokenizer.json the analysis reads; older trainers did not copy them there): copy "
            f"the base model's two files into {path / HF_METADATA_DIR}/"
        )
    hf_config = read_model_config(source)
    tokenizer = load_tokenizer(hf_metadata_dir(source))
    check_tokenizer(str(source), hf_config, tokenizer)
    return hf_config, tokenizer


def read_vocabulary(source: str) -> dict:
    """``vocabulary_of`` a model source from its config and tokenizer alone (no weights)."""
    return vocabulary_of(*read_source(source))


def checkpoint_step(source) -> int | None:
    """The training step of a trainer checkpoint (its ``trainer_state.json``), else None (a
    Hugging Face folder, a converted checkpoint)."""
    state = Path(source) / TRAINER_STATE_FILE
    return int(json.loads(state.read_text())["step"]) if state.is_file() else None


def check_same_vocabulary(first: str, first_vocab: dict, second: str, second_vocab: dict):
    """Raise, naming both models, when their vocabularies differ (size or token -> id map)."""
    for key, what in (("vocab_size", "vocabulary size"), ("tokenizer_sha256", "tokenizer")):
        if first_vocab.get(key) != second_vocab.get(key):
            raise ValueError(
                f"{first} and {second} have different vocabularies ({what}: "
                f"{first_vocab.get(key)} vs {second_vocab.get(key)}): their entropies cannot be "
                "compared token by token; use checkpoints of one model family and tokenizer"
            )


CONFIG_SPECIAL_IDS = ("pad_token_id", "bos_token_id", "eos_token_id")
"""The special ids a model's config.json may name (eos may be a list)."""


def check_tokenizer(source: str, hf_config, tokenizer) -> None:
    """The tokenizer must fit the model: every id it has (special tokens included) has an
    embedding row, and each special id the config names (pad, bos, eos, when set) is a special
    token of this tokenizer. A tokenizer of another family fails one of these even when it has
    fewer tokens than the model's vocabulary.

    The config's ids are not required to equal the tokenizer's pad/eos: Qwen3 base models name
    ``<|endoftext|>`` as eos where the tokenizer's eos (``load_tokenizer``) is ``<|im_end|>``."""
    rows = hf_config.vocab_size
    if len(tokenizer) > rows:
        raise ValueError(
            f"{source}: the tokenizer has {len(tokenizer)} tokens, the model's vocabulary "
            f"{rows}: they do not belong together (is tokenizer.json from another model?)"
        )
    token, largest = max(tokenizer.get_vocab().items(), key=lambda item: item[1])
    if largest >= rows:
        raise ValueError(
            f"{source}: the tokenizer's token {token!r} has id {largest}, the model has {rows} "
            "embedding rows: they do not belong together (is tokenizer.json from another model?)"
        )
    specials = {i: t.content for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for name in CONFIG_SPECIAL_IDS:
        named = getattr(hf_config, name, None)
        for token_id in named if isinstance(named, list | tuple) else [named]:
            if token_id is None or token_id in specials:
                continue
            piece = tokenizer.convert_ids_to_tokens(int(token_id))
            listed = [f"{i} {t}" for i, t in sorted(specials.items())]
            raise ValueError(
                f"{source}: config.json's {name} {token_id} is "
                f"{'no token' if piece is None else repr(piece)} in the tokenizer, not one of its "
                f"special tokens ({', '.join(listed[:6])}{', ...' if len(listed) > 6 else ''}): "
                "the tokenizer is from another model family"
            )


def open_model(source: str, parallel: ParallelConfig | None = None) -> AnalysisModel:
    """Collective over the model's ranks (parallel state already initialised)."""
    parallel = parallel or ParallelConfig()
    if parallel.pipeline_parallel != 1:
        raise ValueError("the analysis tools shard models over TP only: use pipeline_parallel=1")
    hf_config, tokenizer = read_source(source)
    model = build_reference_model(source, parallel)
    return AnalysisModel(str(source), hf_config, tokenizer, special_token_ids(tokenizer), model)
