"""Collect: generate responses for a prompt set with a model (Hugging Face folder or Megatron
checkpoint) and record every response token's entropy and log-prob, teacher-forced through the
trainer's op (``token_scores``), into a token table (``token_table``), chunk by chunk."""

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from transformers import Qwen3ForCausalLM

from megatron_fork.analysis.token_scores import score_samples
from megatron_fork.analysis.token_table import TokenTableWriter
from megatron_fork.data.tokenizer import load_tokenizer, special_token_ids
from megatron_fork.models.hf_mapping import Qwen3Layout
from megatron_fork.rollout.torch_engine import TorchRolloutEngine
from megatron_fork.rollout.types import GenerationRequest, SamplingParams
from megatron_fork.trainer.actor import build_reference_model, read_model_config
from megatron_fork.trainer.checkpoint import hf_metadata_dir
from megatron_fork.trainer.parallel_groups import LossGroups
from megatron_fork.trainer.rl_config import ParallelConfig
from megatron_fork.trainer.rollout_phase import stable_seed
from megatron_fork.trainer.weight_sync import sync_weights


@dataclass(frozen=True)
class CollectConfig:
    model: str
    """A Hugging Face folder or a Megatron checkpoint (its ``hf/`` holds config and tokenizer)."""
    out: str
    """The token table (Parquet) to write."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    samples_per_prompt: int = 1
    chunk_prompts: int = 32
    """Prompts generated and scored together (one row group each: memory stays bounded)."""
    seed: int = 0
    prompt_set: str = ""
    """A name for the metadata (e.g. the data file)."""


def collect(config: CollectConfig, prompts: list[str]) -> Path:
    """One process (parallel state initialised at TP = PP = 1; several ranks are to come).
    Returns the table's path."""
    parallel = ParallelConfig()
    if not prompts:
        raise ValueError("collect: the prompt set is empty")
    hf_config = read_model_config(config.model)
    tokenizer = load_tokenizer(hf_metadata_dir(config.model))
    if len(tokenizer) > hf_config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens, the model {hf_config.vocab_size}: "
            "they do not belong together"
        )
    model = build_reference_model(config.model, parallel)
    ids = special_token_ids(tokenizer)
    engine = TorchRolloutEngine(Qwen3ForCausalLM(hf_config).float(), pad_token_id=ids.pad)
    sync_weights(model, Qwen3Layout.from_hf_config(hf_config), engine, version=0)
    groups = LossGroups.from_parallel_state()
    metadata = {**asdict(config), "weight_version": engine.version, "prompts": len(prompts)}
    with TokenTableWriter(config.out, metadata) as table:
        for start in range(0, len(prompts), config.chunk_prompts):
            samples = engine.generate(_requests(config, tokenizer, prompts, start, ids.eos))
            scores = score_samples(
                model, samples, hf_config.vocab_size, groups, pad_id=ids.pad,
                temperature=config.temperature,
            )  # fmt: skip
            table.write(samples, scores, lambda t: tokenizer.convert_ids_to_tokens(t) or "")
    return Path(config.out)


def _requests(config: CollectConfig, tokenizer, prompts, start: int, eos: int):
    sampling = SamplingParams(
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        stop_token_ids=(eos,),
    )
    requests = []
    for p, prompt in enumerate(prompts[start : start + config.chunk_prompts], start=start):
        prompt_ids = tuple(tokenizer.encode(prompt, add_special_tokens=False))
        if not prompt_ids:
            raise ValueError(f"prompt {p} encodes to no tokens")
        for i in range(config.samples_per_prompt):
            seeded = replace(sampling, seed=stable_seed("collect", config.seed, p, i))
            requests.append(GenerationRequest(prompt_ids, seeded, f"p{p}#{i}"))
    return requests
