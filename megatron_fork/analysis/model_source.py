"""A model source (Hugging Face folder or Megatron checkpoint) opened for analysis: its config,
its tokenizer (checked against the model's vocabulary), the frozen Megatron model at this run's
layout (the trainer's scoring path), and on demand a torch rollout engine on rank 0 holding the
same weights (synced through the trainer's one mapping).

Entropies of two models can only be compared over one vocabulary: ``vocabulary_of`` names it
(embedding rows + a hash of the tokenizer's token -> id map) and ``check_same_vocabulary``
refuses two that differ, naming both."""

import hashlib
import json
from dataclasses import dataclass

import torch.distributed as dist
from transformers import Qwen3ForCausalLM

from megatron_fork.data.tokenizer import SpecialTokenIds, load_tokenizer, special_token_ids
from megatron_fork.models.hf_mapping import Qwen3Layout
from megatron_fork.rollout.torch_engine import TorchRolloutEngine
from megatron_fork.trainer.actor import build_reference_model, read_model_config
from megatron_fork.trainer.checkpoint import hf_metadata_dir
from megatron_fork.trainer.rl_config import ParallelConfig
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
        global rank 0, None on the others."""
        engine = None
        if not dist.is_initialized() or dist.get_rank() == 0:
            hf_model = Qwen3ForCausalLM(self.hf_config).float()
            engine = TorchRolloutEngine(hf_model, max_batch_size, pad_token_id=self.ids.pad)
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


def read_vocabulary(source: str) -> dict:
    """``vocabulary_of`` a model source from its config and tokenizer alone (no weights)."""
    return vocabulary_of(read_model_config(source), load_tokenizer(hf_metadata_dir(source)))


def check_same_vocabulary(first: str, first_vocab: dict, second: str, second_vocab: dict):
    """Raise, naming both models, when their vocabularies differ (size or token -> id map)."""
    for key, what in (("vocab_size", "vocabulary size"), ("tokenizer_sha256", "tokenizer")):
        if first_vocab.get(key) != second_vocab.get(key):
            raise ValueError(
                f"{first} and {second} have different vocabularies ({what}: "
                f"{first_vocab.get(key)} vs {second_vocab.get(key)}): their entropies cannot be "
                "compared token by token; use checkpoints of one model family and tokenizer"
            )


def check_tokenizer(source: str, hf_config, tokenizer) -> None:
    """The tokenizer must fit the model: every id it produces has an embedding row."""
    if len(tokenizer) > hf_config.vocab_size:
        raise ValueError(
            f"{source}: the tokenizer has {len(tokenizer)} tokens, the model's vocabulary "
            f"{hf_config.vocab_size}: they do not belong together (is tokenizer.json from "
            "another model?)"
        )


def open_model(source: str, parallel: ParallelConfig | None = None) -> AnalysisModel:
    """Collective over the model's ranks (parallel state already initialised)."""
    parallel = parallel or ParallelConfig()
    if parallel.pipeline_parallel != 1:
        raise ValueError("the analysis tools shard models over TP only: use pipeline_parallel=1")
    hf_config = read_model_config(source)
    tokenizer = load_tokenizer(hf_metadata_dir(source))
    check_tokenizer(str(source), hf_config, tokenizer)
    model = build_reference_model(source, parallel)
    return AnalysisModel(str(source), hf_config, tokenizer, special_token_ids(tokenizer), model)
