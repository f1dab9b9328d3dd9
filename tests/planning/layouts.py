"""Shared pieces of the planner tests: the paper's sequence and a production layout."""

from megatron_fork.planning import QWEN3_SIZES, TrainingLayout

GIB = 2**30
SEQ = 22528  # 2048 prompt + 20480 response
QWEN3_8B = QWEN3_SIZES["qwen3_8b"]
QWEN3_32B = QWEN3_SIZES["qwen3_32b"]


def layout(**overrides) -> TrainingLayout:
    """Qwen3-8B's suggested layout (TP2 x CP2 x DP16, SP, distributed optimizer), changed."""
    base = dict(
        tensor_parallel=2,
        pipeline_parallel=1,
        context_parallel=2,
        data_parallel=16,
        sequence_parallel=True,
        recompute="none",
        distributed_optimizer=True,
        fp8=False,
        micro_batch_size=1,
        sequence_length=SEQ,
    )
    return TrainingLayout(**(base | overrides))
