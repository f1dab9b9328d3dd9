"""Push the trainer's weights to the rollout engine, through the one mapping, bucket by bucket.

Every rank of the model's first data-parallel replica streams its pipeline stage as Hugging
Face-named tensors (TP shards all-gathered by ``iter_hf_weights``), in size-bounded buckets.
The engine's client lives on global rank 0: stage 0's buckets go to it directly, and each later
stage's first TP rank sends its buckets to rank 0 one at a time (point-to-point, pickled over
the process group), so no rank holds more than one bucket beyond its own parameters: the
bucket size bounds the extra memory of a sync. The new version is set only after the last
bucket, so a partial sync never reports itself as the new weights.
"""

from collections.abc import Callable

import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from megatron_fork.models.hf_mapping import Qwen3Layout, iter_hf_weights, size_bounded_buckets
from megatron_fork.parallel.rank0 import from_rank0

DEFAULT_BUCKET_BYTES = 64 * 1024 * 1024
_END = None  # sent after a stage's last bucket


def _stage_buckets(model, layout: Qwen3Layout, bucket_bytes: int):
    """This stage's buckets. Unsplit parameters stream as views of the live weights: a
    consumer copies them before the next optimizer step (engines copy on receipt)."""
    module = getattr(model, "module", model)
    offset = get_transformer_layer_offset(module.config)
    stream = iter_hf_weights(model, layout, ps.get_tensor_model_parallel_group(), offset)
    return size_bounded_buckets(stream, bucket_bytes)


def _stage_leaders() -> list[int]:
    """Global rank of each pipeline stage's exporting rank (TP rank 0 of DP replica 0)."""
    leads = ps.get_tensor_model_parallel_rank() == 0 and (
        ps.get_data_parallel_rank(with_context_parallel=True) == 0
    )
    mine = (ps.get_pipeline_model_parallel_rank(), dist.get_rank()) if leads else None
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return [rank for _, rank in sorted(entry for entry in gathered if entry is not None)]


def for_each_bucket_on_rank0(
    model, layout: Qwen3Layout, consume: Callable, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> None:
    """Collective over every rank: ``consume(bucket)`` on rank 0 for every bucket of the whole
    model, stage after stage."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        for bucket in _stage_buckets(model, layout, bucket_bytes):
            consume(bucket)
        return
    leaders, rank = _stage_leaders(), dist.get_rank()
    exporting = ps.get_data_parallel_rank(with_context_parallel=True) == 0
    if exporting:  # every TP rank of the stage joins the all-gathers
        for bucket in _stage_buckets(model, layout, bucket_bytes):
            if rank == 0:
                consume(bucket)
            elif rank in leaders:  # on the CPU: rank 0 must not restore onto this rank's GPU
                dist.send_object_list([[(n, t.cpu()) for n, t in bucket]], dst=0)
        if rank in leaders[1:]:
            dist.send_object_list([_END], dst=0)
    if rank == 0:
        for leader in leaders[1:]:
            _receive_stage(leader, consume)


def _receive_stage(leader: int, consume: Callable) -> None:
    while True:
        box = [None]
        dist.recv_object_list(box, src=leader)
        if box[0] is _END:
            return
        consume(box[0])


def sync_weights(
    model, layout: Qwen3Layout, engine, version: int, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> None:
    """Collective over every rank; ``engine`` is the rollout engine on rank 0, None elsewhere.
    Every bucket goes in, then the version (an empty update that carries it). An engine error
    on rank 0 lets the other ranks finish streaming, then is raised on every rank."""
    failures = []

    def consume(bucket):
        if not failures:
            try:
                engine.update_weights(bucket)
            except Exception as error:  # raised below on every rank
                failures.append(error)

    def finish():
        if failures:
            raise failures[0]
        engine.update_weights([], version=version)

    for_each_bucket_on_rank0(model, layout, consume if engine else None, bucket_bytes)
    from_rank0(finish)
