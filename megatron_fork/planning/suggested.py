"""Suggested production layouts for the paper's runs on 16 H100 80GB nodes: Qwen3 8B/14B/32B,
samples of up to 22528 tokens (2048 prompt + 20480 response) packed into micro-batches of
``max_tokens_per_microbatch`` tokens (``BUDGETS``), training and disaggregated sglang engines on
separate nodes, 8 + 8: the estimate in ``step_time.py``
puts 8 + 8 ahead of 4 + 12 for all three (e.g. 13.1 against 14.8 min for 8B at 512 x 16
samples, 256-token prompts, 8192-token mean responses up to 20480, 1.5 generation rounds,
packed). DP is a power
of two so that a mini-batch of 32 prompts x 16 samples = 512 sequences splits evenly. Numbers
are from ``plan_memory`` on ``H100_80GB`` (73.65 GiB usable per GPU after 6 GiB reserved);
rerun ``plan_memory`` and ``.table()`` after any change.

Budgets: at least the longest sample (22528, a multiple of every layout's row unit: 2048 at
TP8 x CP2 with FP8), larger where memory allows: a micro-batch then holds a capped 20k-token
response and shorter ones beside it (at 22528 a capped response leaves room for 2k tokens
only), so fewer micro-batches run. Each keeps at least 10 GiB free in the recipes' FP8 plan
(``largest_budget`` gives the most that fits): packed micro-batches vary in length, which
fragments the caching allocator more than rows of one length did. Qwen3-8B stays at 22528
(24576 would leave 9.9 GiB), 14B and 32B take 32768 (13.2 and 21.8 GiB free with FP8).

No entry recomputes: each fits without it, with room to spare, and Megatron's default
selective recomputation (core_attn) would save nothing here, since flash attention never
stores the attention scores. If memory gets tight (longer responses, fragmentation), the next
lever is recompute="selective" with recompute_modules=("mlp",) (about 20% more training
FLOPs), then recompute="full".
"""

from megatron_fork.planning.layout import RolloutPlacement, TrainingLayout

SEQUENCE_LENGTH = 22528
"""2048 prompt + 20480 response tokens."""
GPUS_PER_NODE = 8
BUDGETS = {"qwen3_8b": 22528, "qwen3_14b": 32768, "qwen3_32b": 32768}
"""``max_tokens_per_microbatch`` per model (the module docstring says why)."""


def _training(tp: int, pp: int, cp: int, nodes: int, budget: int) -> TrainingLayout:
    return TrainingLayout(
        tensor_parallel=tp,
        pipeline_parallel=pp,
        context_parallel=cp,
        data_parallel=nodes * GPUS_PER_NODE // (tp * pp * cp),
        sequence_parallel=True,
        recompute="none",
        distributed_optimizer=True,
        fp8=False,
        micro_batch_size=1,
        sequence_length=SEQUENCE_LENGTH,
        max_tokens_per_microbatch=budget,
    )


def _engines(engine_tp: int, nodes: int) -> RolloutPlacement:
    return RolloutPlacement(
        colocated=False,
        engines=nodes * GPUS_PER_NODE // engine_tp,
        engine_tensor_parallel=engine_tp,
        fp8_weights=False,
        mem_fraction_static=0.8,
    )


SUGGESTED_LAYOUTS: dict[str, tuple[TrainingLayout, RolloutPlacement, int, int]] = {
    # Qwen3-8B: TP=2 x CP=2 (DP=16 on 8 nodes). Weights + fp32 grads are 6 bytes x 4.1B / GPU
    # = 22.9 GiB, Adam states 12 bytes / (DP x CP = 32) = 1.4 GiB; each GPU holds 11264 tokens
    # of a 22528-token micro-batch and, with SP, 1/2 of every layer's 33.5h bytes/token: 25.9
    # GiB for 36 layers; logits [11264, 76032] bf16 + gradient 3.2 GiB. Peak 54.5 GiB, 19.1 GiB
    # free (61.0 and 12.6 with the recipe's FP8 weight copies). Engines at TP=2: 4.1 GB of
    # weights leave a KV cache of 36 full 22.5k-token sequences.
    "qwen3_8b": (_training(2, 1, 2, 8, BUDGETS["qwen3_8b"]), _engines(2, 8), 8, 8),
    # Qwen3-14B: TP=4 x CP=2 (DP=8). 6 bytes x 3.7B = 20.6 GiB of weights + grads, Adam states
    # 2.6 GiB over 16 ranks; activations 1/4 of 35.6h bytes/token x 16384 tokens (of a
    # 32768-token micro-batch) x 40 layers = 27.8 GiB; logits 2.3 GiB. Peak 54.3 GiB, 19.4 GiB
    # free (60.4 and 13.2 with FP8). Engines at TP=4 (40 heads, 8 kv heads): 7.4 GB of
    # weights, KV cache for 66 full-length sequences.
    "qwen3_14b": (_training(4, 1, 2, 8, BUDGETS["qwen3_14b"]), _engines(4, 8), 8, 8),
    # Qwen3-32B: TP=8 (one node) x PP=2 x CP=2 (DP=2). The first stage holds 32 layers +
    # embedding: 2.05B params -> 11.4 GiB of weights + grads, Adam states 5.7 GiB over only 4
    # ranks; 1F1B keeps 2 micro-batches in flight there: 1/8 of 48.9h bytes/token x 16384
    # tokens x 32 layers x 2 = 30.5 GiB. Peak 48.2 GiB, 25.5 GiB free (51.8 and 21.8 with
    # FP8): room for the paper's 29k-token 32B variant. Engines at TP=8: 8.2 GB of weights,
    # KV cache for 81 full-length sequences.
    "qwen3_32b": (_training(8, 2, 2, 8, BUDGETS["qwen3_32b"]), _engines(8, 8), 8, 8),
}
"""name -> (training layout, rollout placement, training nodes, rollout nodes)."""
