"""The embedded default: a ~0.8M-parameter Qwen3 learns the synthetic fold task on one CPU
machine. ``make demo`` runs ``warm_start()`` then ``rl()`` (tools/demo.py).

Sizes are chosen so the whole job fits 15 minutes on 2 cores: the warm start leaves the base
model at roughly 35-45% held-out accuracy (avg@4 at the rollout's sampling: temperature 1.0,
top_p 1.0, the policy RL trains; the paper validates at top_p 0.7, ``eval.top_p=0.7``), and RL
with the paper's top-20% forking-token loss raises it. Everything else is the paper's recipe
(clip-higher 0.2/0.28, dual clip 10, no KL, token-mean over all response tokens, dynamic
sampling).
"""

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from megatron_fork.data.prompt_sets import TEMPLATED, DataConfig
from megatron_fork.forking.config import ForkingLossConfig
from megatron_fork.rewards.config import MathRewardConfig
from megatron_fork.rl.rl_config import EvalConfig, RLConfig, RolloutConfig
from megatron_fork.rl.warm_start import TinyQwen3Size, WarmStartConfig, run_warm_start
from megatron_fork.trainer.trainer_config import OptimizerSettings
from recipes.recipe import LaunchSpec, Recipe

MAX_NEW_TOKENS = 48
"""The task's solutions are 34 tokens with the end token; 48 leaves room to ramble."""


def warm_start(output_dir: str | Path, seed: int = 0) -> WarmStartConfig:
    return WarmStartConfig(output_dir=str(output_dir), steps=80, batch_size=64, seed=seed)


def ensure_base_model(output: str | Path, seed: int = 0) -> tuple[Path, float]:
    """``output/base_model``, warm-started now unless a complete one is there (the demo and the
    ablation reuse it, as a real base model); returns it and the seconds the warm start took."""
    return _ensure_warm_started(Path(output) / "base_model", warm_start, seed)


def _ensure_warm_started(base: Path, make_config, seed: int) -> tuple[Path, float]:
    """``base`` warm-started by ``make_config(base, seed)`` unless a complete one is there."""
    if (base / "model.safetensors").is_file():
        print(f"reusing the base model in {base}")
        return base, 0.0
    start = time.perf_counter()
    run_warm_start(make_config(base, seed))
    return base, time.perf_counter() - start


def rl(base_model: str | Path, output_dir: str | Path, seed: int = 0) -> RLConfig:
    return RLConfig(
        base_model=str(base_model),
        output_dir=str(output_dir),
        steps=60,
        seed=seed,
        mini_batches_per_step=2,
        max_tokens_per_microbatch=4096,  # packed: as many positions as 64 rows of 64 tokens
        micro_batch_size=64,  # packing=False only
        checkpoint_every=20,
        rollout=RolloutConfig(
            prompts_per_step=32,
            samples_per_prompt=8,
            prompts_per_round=48,
            max_new_tokens=MAX_NEW_TOKENS,
        ),
        eval=EvalConfig(every=20, samples_per_prompt=4, top_p=1.0),
        loss=ForkingLossConfig(rho=0.2, strategy="top", seed=seed),
        reward=MathRewardConfig(max_response_tokens=MAX_NEW_TOKENS, overlong_buffer=8),
        optimizer=OptimizerSettings(lr=1e-4, weight_decay=0.0),
    )


def tiny_cpu() -> Recipe:
    """The embedded default as a launchable recipe: one CPU process (``--nproc 2`` and
    ``parallel.tensor_parallel=2`` for two), the in-process torch engine, the base model
    warm-started on the launching machine when ``runs/tiny_cpu/base_model`` is missing."""
    return Recipe(
        name="tiny_cpu",
        config=rl("runs/tiny_cpu/base_model", "runs/tiny_cpu/run"),
        launch=LaunchSpec(model=None, train_nodes=1, gpus_per_node=1, context_tokens=64),
        summary="~0.8M-parameter Qwen3 learns the synthetic fold task on one CPU machine",
        prepare=_warm_start_base_model,
    )


def _warm_start_base_model(config: RLConfig) -> None:
    """Warm-start the base model where the config expects it, unless it is there already."""
    base = Path(config.base_model)
    if not (base / "config.json").is_file():
        run_warm_start(warm_start(base, config.seed))


# The second embedded task (issue 16.2): the same folds written in mostly determined text
# (megatron_fork/data/templated_task.py), for the paper's entropy regime. The fold recipes above
# are untouched; these are the templated task's warm start and RL run.

TEMPLATED_MAX_NEW_TOKENS = 96
"""The templated solutions are 78 tokens with the end token (4 one-digit numbers); 96 leaves
room to ramble within the tiny model's 128 positions (prompt: 8 tokens)."""
TEMPLATED_WARM_START_LR = 3e-3


@dataclass(frozen=True)
class TemplatedModel:
    """One model size of the templated task's study (issue 16.3) and the warm start that puts
    its base model in the paper's regime (near-certain template, imperfect decisions)."""

    size: TinyQwen3Size
    warm_start_steps: int


TEMPLATED_MODELS = {
    # 300 steps: base avg@4 0.13; 600: 0.97; 420: 0.51 (64 held-out prompts x 4)
    "0.8M": TemplatedModel(TinyQwen3Size(), warm_start_steps=420),
    # 3.8x the parameters: twice as wide, as deep (depth costs more CPU time per parameter)
    "3.0M": TemplatedModel(
        TinyQwen3Size(hidden_size=256, intermediate_size=768, num_attention_heads=8),
        warm_start_steps=420,
    ),
}
TEMPLATED_WARM_START_STEPS = TEMPLATED_MODELS["0.8M"].warm_start_steps


def templated_data() -> DataConfig:
    """The templated task's prompts: 4 one-digit numbers, 500 held out, 9,000 to train on."""
    return DataConfig(task=TEMPLATED)


def templated_warm_start(
    output_dir: str | Path, seed: int = 0, model: str = "0.8M"
) -> WarmStartConfig:
    """A warm start long enough to make the template near-certain, short enough to leave the
    decisions (comparisons, mod-10 results) imperfect; ``model`` names a TEMPLATED_MODELS size."""
    chosen = templated_model(model)
    return WarmStartConfig(
        output_dir=str(output_dir),
        steps=chosen.warm_start_steps,
        batch_size=64,
        seed=seed,
        size=chosen.size,
        data=templated_data(),
        optimizer=OptimizerSettings(lr=TEMPLATED_WARM_START_LR, weight_decay=0.0),
    )


def templated_model(name: str) -> TemplatedModel:
    if name not in TEMPLATED_MODELS:
        raise ValueError(
            f"unknown templated model size {name!r}; choose from {list(TEMPLATED_MODELS)}"
        )
    return TEMPLATED_MODELS[name]


def ensure_templated_base_model(
    output: str | Path, seed: int = 0, model: str = "0.8M"
) -> tuple[Path, float]:
    """``output/base_model`` of the templated task at size ``model``, warm-started now unless
    one is there; returns it and the seconds the warm start took (as ``ensure_base_model``)."""
    base = Path(output) / "base_model"
    _refuse_other_size(base, templated_model(model).size, model)
    return _ensure_warm_started(base, lambda out, s: templated_warm_start(out, s, model), seed)


def _refuse_other_size(base: Path, size: TinyQwen3Size, model: str) -> None:
    """A base model of another size in ``base`` is an error, not something to reuse."""
    config = base / "config.json"
    if not config.is_file():
        return
    found = json.loads(config.read_text())
    if any(found.get(key) != value for key, value in vars(size).items()):
        raise ValueError(
            f"{base} holds a base model of another size than {model!r} "
            f"(hidden_size {found.get('hidden_size')}); use another --output"
        )


def rl_templated(base_model: str | Path, output_dir: str | Path, seed: int = 0) -> RLConfig:
    """``rl()`` on the templated task: its prompts, and room for its longer solutions."""
    config = rl(base_model, output_dir, seed)
    return replace(
        config,
        data=templated_data(),
        max_tokens_per_microbatch=8192,  # packed: 64 rows of 128 tokens
        rollout=replace(config.rollout, max_new_tokens=TEMPLATED_MAX_NEW_TOKENS),
        reward=replace(config.reward, max_response_tokens=TEMPLATED_MAX_NEW_TOKENS),
    )
