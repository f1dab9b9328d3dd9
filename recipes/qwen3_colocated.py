"""The paper's recipe on one or two nodes: engines and trainer share the GPUs
(``rollout.placement=colocated``), memory handed back and forth every step.

- ``qwen3_8b_1node``: Qwen3-8B Base on one node of 8 H100 80GB, the paper's hyperparameters
  (``recipes.qwen3``: 512 prompts x 16 samples, responses up to 20480 tokens, DAPO + top-20%
  forking tokens). ``launch.train_nodes=2`` runs it on two nodes (DP 2).
- ``qwen3_14b_2node``: Qwen3-14B Base on two nodes.

Per step (``megatron_fork.planning.colocation``): the sglang engines (one per
``launch.engines.tensor_parallel`` GPUs of every node, ``--enable-memory-saver``) generate
while the trainer's weights and optimizer state wait in host memory; the engines release their
memory; the trainer reloads and trains; the engines resume their weights and receive the new
ones on the node; the trainer offloads; the engines resume their KV cache.

Layouts, from ``python tools/plan.py <name>`` (73.65 GiB usable per GPU, FP8 as the 16-node
recipes): 8B at TP4 x CP2 (DP1) peaks at 66.7 GiB in the rollout phase (sglang's pool at
mem_fraction_static 0.8 + the offloaded trainer's residue) and 44.2 GiB in training; engines at
TP2 hold 36 full-length sequences each. 14B at TP4 x CP2 x DP2 trains at 61.5 GiB (12 GiB free;
the 16-node budget of 32768 would leave 2.4 GiB), engines at TP4 (66 sequences each). Expect
hours per step, not minutes: ``tools/plan.py`` estimates 170 min per step for 8B on one node,
85 on two (rollout decode is most of it), against 22 min on the 16-node recipe, at half the
GPU-hours per step (README "Choosing a placement").

Launch on a GPU node (torchrun there; local rank 0 starts the node's engines):
    python -m recipes qwen3_8b_1node --nproc 8 base_model=/ckpt/qwen3-8b-base-mcore \\
        output_dir=/runs/q8b-1node data.train=/data/dapo-math-17k.parquet \\
        data.eval=/data/aime-2024.parquet
or on Slurm (one node group, no engine nodes), as ``recipes.qwen3`` says, with
``--executor slurm``.

A shorter maximum response length is an explicit option, never the default: the paper trains
with 20480. ``SHORT_RESPONSE_OVERRIDES`` (8192-token responses) cuts decode and activations;
its results are not the paper's:
    python -m recipes qwen3_8b_1node rollout.max_new_tokens=8192 \\
        reward.max_response_tokens=8192 launch.context_tokens=10240 \\
        max_tokens_per_microbatch=10240 ...
"""

import dataclasses

from megatron_fork.trainer.trainer_config import ParallelConfig
from recipes.qwen3 import MAX_PROMPT_TOKENS, MAX_RESPONSE_TOKENS, _paper_config
from recipes.recipe import EngineSpec, LaunchSpec, Recipe

COLOCATED_MEM_FRACTION = 0.8
"""sglang's pool on a shared GPU: what is left (16 GiB) holds sglang's activations and CUDA
graphs and the offloaded trainer's residue."""
SHORT_RESPONSE_TOKENS = 8192
SHORT_RESPONSE_OVERRIDES = (
    f"rollout.max_new_tokens={SHORT_RESPONSE_TOKENS}",
    f"reward.max_response_tokens={SHORT_RESPONSE_TOKENS}",
    f"launch.context_tokens={MAX_PROMPT_TOKENS + SHORT_RESPONSE_TOKENS}",
    f"max_tokens_per_microbatch={MAX_PROMPT_TOKENS + SHORT_RESPONSE_TOKENS}",
)
"""The documented shorter-response option (10240 tokens: a multiple of the 1024-token FP8 row
unit at TP4 x CP2)."""


def _colocated(name, model, tp, cp, nodes, engine_tp, summary) -> Recipe:
    parallel = ParallelConfig(
        tensor_parallel=tp,
        pipeline_parallel=1,
        context_parallel=cp,
        sequence_parallel=True,
        recompute="none",
        distributed_optimizer=True,
        collective_timeout_minutes=120.0,
    )
    config = _paper_config(model, parallel, MAX_PROMPT_TOKENS + MAX_RESPONSE_TOKENS)
    rollout = dataclasses.replace(config.rollout, placement="colocated")
    config = dataclasses.replace(
        config,
        base_model=f"/checkpoints/{model}_base_mcore",
        output_dir=f"/results/{name}_forking_top20",
        rollout=rollout,
        checkpoint_every=1,  # a step takes hours here: a requeue loses at most one
    )
    launch = LaunchSpec(
        model=model,
        train_nodes=nodes,
        gpus_per_node=8,
        context_tokens=MAX_PROMPT_TOKENS + MAX_RESPONSE_TOKENS,
        engines=EngineSpec(
            nodes=0, tensor_parallel=engine_tp, mem_fraction_static=COLOCATED_MEM_FRACTION
        ),
    )
    return Recipe(name=name, config=config, launch=launch, summary=summary)


def qwen3_8b_1node() -> Recipe:
    return _colocated(
        "qwen3_8b_1node", "qwen3_8b", 4, 2, 1, 2,
        "Qwen3-8B Base on one 8-GPU node, engines colocated (the paper's hyperparameters)",
    )  # fmt: skip


def qwen3_14b_2node() -> Recipe:
    return _colocated(
        "qwen3_14b_2node", "qwen3_14b", 4, 2, 2, 4,
        "Qwen3-14B Base on two 8-GPU nodes, engines colocated (the paper's hyperparameters)",
    )  # fmt: skip
