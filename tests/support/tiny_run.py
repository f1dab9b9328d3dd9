"""A tiny end-to-end RL setup for loop tests: a 2-term synthetic task, a ~20k-parameter Qwen3
warm-started for a few steps (a real saved base model), and an RLConfig a few steps long."""

import dataclasses
import json
from pathlib import Path

from megatron_fork.data.prompt_sets import DataConfig
from megatron_fork.rewards.config import MathRewardConfig
from megatron_fork.rl.rl_config import EvalConfig, RLConfig, RolloutConfig
from megatron_fork.rl.warm_start import TinyQwen3Size, WarmStartConfig
from megatron_fork.trainer.trainer_config import OptimizerSettings, ParallelConfig

MAX_NEW_TOKENS = 16
DATA = DataConfig(synthetic_terms=2, synthetic_heldout=20)
SIZE = TinyQwen3Size(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
)


def warm_start_config(output_dir) -> WarmStartConfig:
    return WarmStartConfig(
        output_dir=str(output_dir),
        steps=60,
        batch_size=16,
        micro_batch_size=8,
        size=SIZE,
        data=DATA,
        optimizer=OptimizerSettings(lr=3e-3, weight_decay=0.0),
    )


def rl_config(base_model, output_dir, steps: int = 3, **changes) -> RLConfig:
    config = RLConfig(
        base_model=str(base_model),
        output_dir=str(output_dir),
        steps=steps,
        mini_batches_per_step=2,
        micro_batch_size=4,
        checkpoint_every=1,
        tensorboard=True,
        progress=False,
        data=DATA,
        rollout=RolloutConfig(
            prompts_per_step=4,
            samples_per_prompt=4,
            prompts_per_round=6,
            max_new_tokens=MAX_NEW_TOKENS,
            engine_batch_size=64,
        ),
        eval=EvalConfig(every=2, samples_per_prompt=2, max_prompts=8),
        reward=MathRewardConfig(
            max_response_tokens=MAX_NEW_TOKENS, overlong_buffer=4, num_workers=1
        ),
        optimizer=OptimizerSettings(lr=1e-3, weight_decay=0.0),
        parallel=ParallelConfig(vocab_multiple=16),
    )
    return dataclasses.replace(config, **changes)


def write_config(config: RLConfig, path: Path) -> Path:
    path.write_text(json.dumps(dataclasses.asdict(config)))
    return path


def comparable(record: dict) -> dict:
    """A metrics record without wall-clock timings (which differ between any two runs)."""
    return {k: v for k, v in record.items() if not k.startswith("time/")}
