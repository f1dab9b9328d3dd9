"""Suggested production layouts for the paper's runs on 16 H100 80GB nodes: Qwen3 8B/14B/32B,
22528-token sequences (2048 prompt + 20480 response), one sequence per micro-batch, training
and disaggregated sglang engines on separate nodes, 8 + 8: the estimate in ``step_time.py``
puts 8 + 8 ahead of 4 + 12 for all three (e.g. 12.8 against 14.2 min for 8B at 512 x 16
samples, 256-token prompts, 8192-token mean responses, 1.5 generation rounds). DP is a power
of two so that a mini-batch of 32 prompts x 16 samples = 512 sequences splits evenly. Numbers
are from ``plan_memory`` on ``H100_80GB`` (73.65 GiB usable per GPU after 6 GiB reserved);
rerun ``plan_memory`` and ``.table()`` after any change.

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


def _training(tp: int, pp: int, cp: int, nodes: int) -> TrainingLayout:
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
    # of a sequence and, with SP, 1/2 of every layer's 33.5h bytes/token: 25.9 GiB for 36
    # layers; logits [11264, 76032] bf16 + gradient 3.2 GiB. Peak 54.5 GiB, 19.1 GiB free.
    # Engines at TP=2: 4.1 GB of weights leave a KV cache of 36 full 22.5k-token sequences.
    "qwen3_8b": (_training(2, 1, 2, 8), _engines(2, 8), 8, 8),
    # Qwen3-14B: TP=4 x CP=2 (DP=8). 6 bytes x 3.7B = 20.6 GiB of weights + grads, Adam states
    # 2.6 GiB over 16 ranks; activations 1/4 of 35.6h bytes/token x 11264 tokens x 40 layers =
    # 19.1 GiB; logits 1.6 GiB. Peak 44.6 GiB, 29.0 GiB free. Engines at TP=4 (40 heads, 8 kv
    # heads): 7.4 GB of weights, KV cache for 66 full-length sequences.
    "qwen3_14b": (_training(4, 1, 2, 8), _engines(4, 8), 8, 8),
    # Qwen3-32B: TP=8 (one node) x PP=2 x CP=2 (DP=2). The first stage holds 32 layers +
    # embedding: 2.05B params -> 11.4 GiB of weights + grads, Adam states 5.7 GiB over only 4
    # ranks; 1F1B keeps 2 micro-batches in flight there: 1/8 of 48.9h bytes/token x 11264
    # tokens x 32 layers x 2 = 21.0 GiB. Peak 38.5 GiB, 35.2 GiB free: room for the paper's
    # 29k-token 32B variant. (PP=1 also fits, 50.8 GiB.) Engines at TP=8: 8.2 GB of weights,
    # KV cache for 81 full-length sequences.
    "qwen3_32b": (_training(8, 2, 2, 8), _engines(8, 8), 8, 8),
}
"""name -> (training layout, rollout placement, training nodes, rollout nodes)."""
