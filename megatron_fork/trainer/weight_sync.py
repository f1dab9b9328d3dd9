"""Push the trainer's weights into the in-process rollout engine, through the one mapping.

Every rank of the model's first data-parallel replica streams its pipeline stage as Hugging
Face-named tensors (TP shards all-gathered by ``iter_hf_weights``), in size-bounded buckets.
The engine lives on global rank 0: with one process the buckets go straight in; with several,
each stage's TP-rank-0 buckets are gathered to rank 0 in one ``gather_object`` (pickled over
the process group: the CPU path for tiny models; it holds a whole stage per rank and the whole
model on rank 0, so it is not the path for large models, whose rollout engines take buckets
over their own transport). The new version is set only with the last bucket, so a partial
sync never reports itself as the new weights.
"""

import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from megatron_fork.models.hf_mapping import Qwen3Layout, iter_hf_weights, size_bounded_buckets

DEFAULT_BUCKET_BYTES = 64 * 1024 * 1024


def _stage_buckets(model, layout: Qwen3Layout, bucket_bytes: int):
    module = getattr(model, "module", model)
    offset = get_transformer_layer_offset(module.config)
    stream = iter_hf_weights(model, layout, ps.get_tensor_model_parallel_group(), offset)
    # Copies: unsplit parameters stream as views of the live weights.
    return (
        [(name, tensor.detach().clone()) for name, tensor in bucket]
        for bucket in size_bounded_buckets(stream, bucket_bytes)
    )


def hf_buckets_on_rank0(
    model, layout: Qwen3Layout, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> list | None:
    """Collective over every rank: the whole model's HF-named buckets on rank 0 (None
    elsewhere), stage after stage."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(_stage_buckets(model, layout, bucket_bytes))
    exporting = ps.get_data_parallel_rank(with_context_parallel=True) == 0
    buckets = list(_stage_buckets(model, layout, bucket_bytes)) if exporting else []
    if ps.get_tensor_model_parallel_rank() != 0:
        buckets = []  # every TP rank of a stage holds the same full tensors; one sends
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(buckets, gathered, dst=0)
    if dist.get_rank() != 0:
        return None
    return [bucket for rank_buckets in gathered for bucket in rank_buckets]


def sync_weights(
    model, layout: Qwen3Layout, engine, version: int, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> None:
    """Collective over every rank; ``engine`` is the rollout engine on rank 0, None elsewhere."""
    buckets = hf_buckets_on_rank0(model, layout, bucket_bytes)
    if buckets is not None:
        for i, bucket in enumerate(buckets):
            last = i == len(buckets) - 1
            engine.update_weights(bucket, version=version if last else None)
