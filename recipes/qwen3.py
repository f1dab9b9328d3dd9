"""Qwen3-8B / 14B / 32B Base with the paper's recipe (../shared/PAPER.md "Training recipe"):
DAPO (clip-higher 0.2/0.28, dual clip 10, token-mean, dynamic sampling of up to 10 rounds then
an error, overlong shaping over a 4096-token buffer, no KL) with the policy gradient through the
top 20% highest-entropy tokens, on 16 H100 80GB nodes: 8 training + 8 for sglang engines.

Launch (after converting the base model, README "Reproduce the paper"):
    python -m recipes qwen3_14b --executor slurm --account ACCT --partition batch \\
        --container-image /lustre/images/megatron-fork.sqsh --mount /lustre:/lustre \\
        base_model=/lustre/ckpt/qwen3-14b-base-mcore output_dir=/lustre/runs/q14b-top20 \\
        data.train=/lustre/data/dapo-math-17k.parquet data.eval=/lustre/data/aime-2024.parquet
(the run's files must lie under a --mount: checked before submitting).
Expected (paper): AIME'24 avg@32 of 50.42 for 14B (DAPO alone 45.21), 63.54 for 32B (55.83),
34.58 for 8B (33.33), after the paper's training length (about 1000 steps for 32B at 512
prompts per step; the paper does not state 8B/14B's).

Ablations are overrides, not new recipes: ``loss.strategy=all`` (plain DAPO),
``loss.strategy=random`` (the same count of random tokens), ``loss.strategy=bottom``,
``loss.rho=0.1``, ``loss.scope=local_microbatch loss.normalizer=microbatch_selected_mean``
(the public code's variant).

Layouts and packing budgets (``max_tokens_per_microbatch``: 22528 for 8B, 32768 for 14B/32B)
come from ``megatron_fork.planning.SUGGESTED_LAYOUTS`` (why each fits 80 GB is written there;
``python tools/plan.py qwen3_32b`` prints the breakdown and packed against padded training).
Precision: bf16 weights with fp32 main weights and gradients; Transformer Engine FP8 (e4m3,
blockwise 128x128 scaling, the scheme sglang's FP8 engines use) for the linear layers of the
transformer blocks except the first and last block; embeddings, norms, the output layer and
the log-prob / entropy / loss maths stay bf16/fp32. Engines serve bf16 (``rollout.fp8=True``
sends blockwise FP8 weights to engines serving FP8, whose config.json gets the matching
``quantization_config``: ``recipes.engine_task``). ``rollout.backend=vllm`` runs vLLM engines
instead of sglang on the same engine nodes (README "Choosing sglang or vLLM engines").
"""

from megatron_fork.data.prompt_sets import DataConfig
from megatron_fork.forking.config import ForkingLossConfig
from megatron_fork.planning import SUGGESTED_LAYOUTS
from megatron_fork.rewards.config import MathRewardConfig
from megatron_fork.rl.dynamic_sampling import DynamicSamplingConfig
from megatron_fork.rl.rl_config import EvalConfig, RLConfig, RolloutConfig
from megatron_fork.trainer.trainer_config import OptimizerSettings, ParallelConfig, PrecisionConfig
from recipes.recipe import EngineSpec, LaunchSpec, Recipe

MAX_PROMPT_TOKENS = 2048
MAX_RESPONSE_TOKENS = 20480
DATA = DataConfig(train="/data/dapo-math-17k.parquet", eval="/data/aime-2024.parquet")
"""DAPO-Math-17K and AIME'24 on a mounted file system (JSONL/JSON/parquet; the loaders' layouts)."""


CHECKPOINT_EVERY = {"qwen3_8b": 2, "qwen3_14b": 2, "qwen3_32b": 1}
"""Steps between checkpoints: about 45 minutes of the planner's step-time estimate, so a job
requeued at its 4-hour limit loses under an hour (each checkpoint: weights + optimizer)."""


def _paper_config(name: str, parallel: ParallelConfig, budget: int) -> RLConfig:
    return RLConfig(
        base_model=f"/checkpoints/{name}_base_mcore",
        output_dir=f"/results/{name}_forking_top20",
        steps=1000,
        mini_batches_per_step=16,  # 512 prompts x 16 samples in mini-batches of 32 prompts
        packing=True,  # samples packed back to back (THD), balanced over DP by tokens
        max_tokens_per_microbatch=budget,  # >= 2048 + 20480: SUGGESTED_LAYOUTS' budget
        micro_batch_size=1,  # packing=False only: one 22.5k-token row per micro-batch
        checkpoint_every=CHECKPOINT_EVERY[name],
        keep_checkpoints=2,
        progress=False,  # logs to files on a cluster: JSONL + TensorBoard instead
        data=DATA,
        rollout=RolloutConfig(
            prompts_per_step=512,
            samples_per_prompt=16,
            prompts_per_round=1536,
            max_new_tokens=MAX_RESPONSE_TOKENS,
            engine="server",
            weight_backend="nccl",
            request_timeout_s=3600.0,
        ),
        # The paper's script: max_num_gen_batches=10, and DAPO stops with an error when they run
        # out (dynamic_sampling.on_exhausted=top_up trains on a topped-up batch instead).
        dynamic_sampling=DynamicSamplingConfig(max_rounds=10, on_exhausted="error"),
        eval=EvalConfig(every=10, samples_per_prompt=32, temperature=1.0, top_p=0.7),
        loss=ForkingLossConfig(rho=0.2, strategy="top"),
        reward=MathRewardConfig(max_response_tokens=MAX_RESPONSE_TOKENS, num_workers=16),
        optimizer=OptimizerSettings(lr=1e-6, weight_decay=0.1, clip_grad=1.0, warmup_steps=10),
        parallel=parallel,
        precision=PrecisionConfig(params="bf16", fp8="e4m3", fp8_recipe="blockwise"),
    )


def _recipe(name: str, summary: str) -> Recipe:
    training, rollout, train_nodes, engine_nodes = SUGGESTED_LAYOUTS[name]
    parallel = ParallelConfig(
        tensor_parallel=training.tensor_parallel,
        pipeline_parallel=training.pipeline_parallel,
        context_parallel=training.context_parallel,
        sequence_parallel=training.sequence_parallel,
        recompute=training.recompute,
        distributed_optimizer=training.distributed_optimizer,
        collective_timeout_minutes=120.0,
    )
    config = _paper_config(name, parallel, training.max_tokens_per_microbatch)
    launch = LaunchSpec(
        model=name,
        train_nodes=train_nodes,
        gpus_per_node=8,
        context_tokens=MAX_PROMPT_TOKENS + MAX_RESPONSE_TOKENS,
        engines=EngineSpec(nodes=engine_nodes, tensor_parallel=rollout.engine_tensor_parallel),
    )
    return Recipe(name=name, config=config, launch=launch, summary=summary)


def qwen3_8b() -> Recipe:
    return _recipe("qwen3_8b", "Qwen3-8B Base, DAPO + top-20% forking tokens (AIME'24 34.58)")


def qwen3_14b() -> Recipe:
    return _recipe("qwen3_14b", "Qwen3-14B Base, DAPO + top-20% forking tokens (AIME'24 50.42)")


def qwen3_32b() -> Recipe:
    return _recipe("qwen3_32b", "Qwen3-32B Base, DAPO + top-20% forking tokens (AIME'24 63.54)")
