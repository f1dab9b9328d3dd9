"""The supervised warm start: a randomly initialised tiny Qwen3 learns the reference solutions
of the training prompts for a few steps, with the same Megatron actor as RL (cross-entropy on
the solution tokens), and is saved as a Hugging Face directory, the run's "base model".

Short on purpose: the base model must leave room for RL (the demo aims at 10-60% held-out
accuracy), as a real base model solves some problems and not others.
"""

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist
from megatron.core import parallel_state as ps
from transformers import Qwen3Config

from megatron_fork.data.prompt_sets import DataConfig, load_prompt_sets
from megatron_fork.data.prompt_stream import PromptStream
from megatron_fork.data.tokenizer import (
    TOKENIZER_FILE,
    build_and_save,
    load_tokenizer,
    special_token_ids,
)
from megatron_fork.models.hf_directory import save_hf_model
from megatron_fork.rl.train_batch import row_length
from megatron_fork.trainer.actor import (
    build_actor,
    device,
    init_parallel,
    optimizer_step,
    shutdown_parallel,
    zero_grads,
)
from megatron_fork.trainer.parallel_groups import LossGroups
from megatron_fork.trainer.policy_batch import moved_to
from megatron_fork.trainer.sft_step import sft_forward_backward_step, sft_microbatch
from megatron_fork.trainer.trainer_config import OptimizerSettings, ParallelConfig
from megatron_fork.trainer.weight_sync import for_each_bucket_on_rank0


@dataclass(frozen=True)
class TinyQwen3Size:
    """The tiny model of the embedded default (about 0.8M parameters)."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    max_position_embeddings: int = 128
    tie_word_embeddings: bool = False


@dataclass(frozen=True)
class WarmStartConfig:
    output_dir: str
    """Where the base model (a Hugging Face directory) is written."""
    steps: int = 100
    batch_size: int = 64
    micro_batch_size: int = 32
    seed: int = 0
    size: TinyQwen3Size = field(default_factory=TinyQwen3Size)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerSettings = field(
        default_factory=lambda: OptimizerSettings(lr=1e-3, weight_decay=0.0)
    )
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


def tiny_qwen3_config(size: TinyQwen3Size, vocab_size: int, pad_id: int, eos_id: int):
    return Qwen3Config(
        vocab_size=vocab_size,
        rms_norm_eps=1e-6,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        **vars(size),
    )


def _micro_batches(tokenizer, examples, eos_id, pad_id, micro_batch_size):
    pairs = [
        (
            tokenizer.encode(e.prompt, add_special_tokens=False),
            tokenizer.encode(e.solution, add_special_tokens=False) + [eos_id],
        )
        for e in examples
    ]
    seq_len = row_length(max(len(p) + len(c) for p, c in pairs))
    return [
        sft_microbatch(pairs[i : i + micro_batch_size], seq_len, pad_id)
        for i in range(0, len(pairs), micro_batch_size)
    ]


def _reports(outputs) -> bool:
    """One rank prints: the last stage's first TP and DP rank."""
    return (
        bool(outputs)
        and ps.get_tensor_model_parallel_rank() == 0
        and (ps.get_data_parallel_rank() == 0)
    )


def run_warm_start(config: WarmStartConfig) -> Path:
    """Train and save the base model; returns its directory (on every rank)."""
    owns_group = not dist.is_initialized()
    init_parallel(config.parallel, config.seed)
    try:
        with tempfile.TemporaryDirectory(prefix="warm_start_") as scratch:
            return _warm_start(config, Path(scratch))
    finally:
        shutdown_parallel(destroy_process_group=owns_group)


def _warm_start(config: WarmStartConfig, scratch: Path) -> Path:
    # Every rank writes its own scratch copy of the tokenizer and config (no shared disk needed).
    build_and_save(scratch)
    tokenizer = load_tokenizer(scratch)
    ids = special_token_ids(tokenizer)
    hf_config = tiny_qwen3_config(config.size, ids.vocab_size, ids.pad, ids.eos)
    hf_config.save_pretrained(scratch)
    actor = build_actor(scratch, config.parallel, config.optimizer, load_weights=False)
    groups = LossGroups.from_parallel_state()
    examples = load_prompt_sets(config.data).train
    stream = PromptStream(examples, config.seed)
    dp_size, dp_rank = groups.dp_size, ps.get_data_parallel_rank()
    if config.batch_size % (dp_size * config.micro_batch_size):
        raise ValueError(
            f"warm start batch_size {config.batch_size} must split into {dp_size} DP slices of "
            f"whole micro-batches of {config.micro_batch_size}"
        )
    rows = config.batch_size // dp_size
    for step in range(1, config.steps + 1):
        batch = stream.take(config.batch_size)[dp_rank * rows : (dp_rank + 1) * rows]
        shards = [
            moved_to(mb, device())
            for mb in _micro_batches(tokenizer, batch, ids.eos, ids.pad, config.micro_batch_size)
        ]
        zero_grads(actor)
        outputs = sft_forward_backward_step(actor.model, shards, groups, actor.vocab_size)
        optimizer_step(actor)
        if _reports(outputs) and (step % 20 == 0 or step == config.steps):
            loss = float(sum(o["loss"] for o in outputs))
            print(f"warm start step {step}/{config.steps}: loss {loss:.4f}", flush=True)
    weights = {}  # on rank 0: the whole (tiny) model
    for_each_bucket_on_rank0(actor.model, actor.layout, weights.update)
    if dist.get_rank() == 0:
        save_hf_model(
            config.output_dir, hf_config, weights, {TOKENIZER_FILE: scratch / TOKENIZER_FILE}
        )
    dist.barrier()
    return Path(config.output_dir)
