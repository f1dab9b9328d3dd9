"""Push the trainer's weights to the rollout engine, through the one mapping, bucket by bucket.

Every rank of the model's first data-parallel replica streams its pipeline stage as Hugging
Face-named tensors (TP shards all-gathered by ``iter_hf_weights``), in size-bounded buckets, so
no rank holds more than one bucket beyond its own parameters: the bucket size bounds the extra
memory of a sync. Two ways out, chosen by rank 0's engine:

- Rollout servers (``ServerRolloutEngine``): rank 0 is the controller (restarts, pause, flush,
  version); each stage's leader (TP rank 0 of replica 0) broadcasts its own stage straight to
  the servers over a weight-update group of its own (``StageSender``), from the device its
  weights live on, so no stage passes through rank 0 or host memory. Stages take turns, stage 0
  first: a server handles one weight request at a time, and two stages sending at once could
  leave each server waiting on another group (a deadlock across groups). The turn passes with a
  broadcast of the finished stage's outcome over the trainer's process group, so every rank
  learns at once when a stage fails; the sync is then abandoned on rank 0 and the error raised
  on every rank.
- An engine in rank 0's process (the torch engine): later stages' leaders send their buckets to
  rank 0 one at a time (a small pickled header, then the tensors point to point).

Either way the new version is set only after every stage's last bucket, so a partial sync never
reports itself as the new weights.
"""

from collections.abc import Callable

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from megatron_fork.models.hf_mapping import Qwen3Layout, iter_hf_weights, size_bounded_buckets
from megatron_fork.parallel.rank0 import from_rank0, is_rank0
from megatron_fork.rollout.stage_sender import StageSender, SyncPlan

DEFAULT_BUCKET_BYTES = 64 * 1024 * 1024
_END = None  # the header after a stage's last bucket


class WeightSyncError(RuntimeError):
    """A stage failed to send its weights; the sync was abandoned (servers resync next time)."""


def _stage_buckets(model, layout: Qwen3Layout, bucket_bytes: int):
    """This stage's buckets. Unsplit parameters stream as views of the live weights: a
    consumer copies them before the next optimizer step (engines copy on receipt)."""
    module = getattr(model, "module", model)
    offset = get_transformer_layer_offset(module.config)
    stream = iter_hf_weights(model, layout, ps.get_tensor_model_parallel_group(), offset)
    return size_bounded_buckets(stream, bucket_bytes)


def _stage_leaders() -> list[int]:
    """Global rank of each pipeline stage's exporting rank (TP rank 0 of DP replica 0)."""
    leads = ps.get_tensor_model_parallel_rank() == 0 and _exporting()
    mine = (ps.get_pipeline_model_parallel_rank(), dist.get_rank()) if leads else None
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return [rank for _, rank in sorted(entry for entry in gathered if entry is not None)]


def _exporting() -> bool:
    """This rank streams its stage (the first DP/CP replica; every TP rank of it)."""
    return ps.get_data_parallel_rank(with_context_parallel=True) == 0


def _single_process() -> bool:
    return not dist.is_initialized() or dist.get_world_size() == 1


def for_each_bucket_on_rank0(
    model, layout: Qwen3Layout, consume: Callable, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> None:
    """Collective over every rank: ``consume(bucket)`` on rank 0 for every bucket of the whole
    model, stage after stage; a later stage's bucket arrives on the device it was sent from
    (its leader's; the CPU on gloo) and is dropped once ``consume`` returns."""
    if _single_process():
        for bucket in _stage_buckets(model, layout, bucket_bytes):
            consume(bucket)
        return
    leaders, rank = _stage_leaders(), dist.get_rank()
    if _exporting():  # every TP rank of the stage joins the all-gathers
        for bucket in _stage_buckets(model, layout, bucket_bytes):
            if rank == 0:
                consume(bucket)
            elif rank in leaders:
                _send_bucket(bucket)
        if rank in leaders[1:]:
            dist.send_object_list([_END], dst=0)
    if rank == 0:
        for leader in leaders[1:]:
            while (bucket := _receive_bucket(leader)) is not None:
                consume(bucket)


def _send_bucket(bucket) -> None:
    """To rank 0: names, dtypes, shapes and device type (pickled), then each tensor."""
    tensors = [tensor.detach().contiguous() for _, tensor in bucket]
    header = [(name, t.dtype, tuple(t.shape)) for (name, _), t in zip(bucket, tensors, strict=True)]
    dist.send_object_list([(header, tensors[0].device.type if tensors else "cpu")], dst=0)
    for tensor in tensors:
        dist.send(tensor, dst=0)


def _receive_bucket(leader: int):
    """The next bucket from ``leader``, or None after its last."""
    box = [None]
    dist.recv_object_list(box, src=leader)
    if box[0] is _END:
        return None
    header, device_type = box[0]
    device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else "cpu"
    bucket = []
    for name, dtype, shape in header:
        tensor = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(tensor, src=leader)
        bucket.append((name, tensor))
    return bucket


class WeightSync:
    """A run's weight sync; every rank holds one and calls ``sync`` together (collective).

    ``engine`` is rank 0's (None elsewhere). ``store_address``: where this rank hosts its
    weight-update group's store if it leads a stage (as the servers reach it; loopback for
    local servers, ``"hostname"`` for this host's name). The groups live across syncs."""

    def __init__(
        self,
        model,
        layout: Qwen3Layout,
        engine,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        store_address: str = "127.0.0.1",
    ):
        self.model, self.layout, self.engine = model, layout, engine
        self.bucket_bytes, self.store_address = bucket_bytes, store_address
        self._sender: StageSender | None = None  # made when this rank first leads a stage
        self._leaders: list[int] | None = None

    @property
    def group_name(self) -> str | None:
        """This rank's weight-update group (None unless it leads a stage and has sent)."""
        return None if self._sender is None else self._sender.group_name

    def sync(self, version: int) -> None:
        """Every stage's weights into the engine, then ``version``; raises on every rank if
        any stage or the engine fails (the engine is then left to resync at the next call)."""
        plan = from_rank0(self._begin)
        if plan is None:
            self._sync_through_rank0(version)
            return
        failure = self._send_stages(plan)
        from_rank0(lambda: self._finish(failure, version))

    def _begin(self) -> SyncPlan | None:
        """Rank 0: a plan for the stages' senders, or None for an engine in this process."""
        begin_sync = getattr(self.engine, "begin_sync", None)  # servers: ServerRolloutEngine
        return begin_sync() if begin_sync is not None else None

    def _send_stages(self, plan: SyncPlan) -> str | None:
        """Stage after stage, each leader sends its own; the first failure (the same on every
        rank), or None. The turn passes when the stage's leader broadcasts its outcome."""
        if _single_process():
            return self._send_own_stage(plan, 0)
        if self._leaders is None:
            self._leaders = _stage_leaders()
        my_stage = ps.get_pipeline_model_parallel_rank()
        for stage, leader in enumerate(self._leaders):
            outcome = None
            if stage == my_stage and _exporting():
                outcome = self._send_own_stage(plan, stage)
            box = [outcome]
            dist.broadcast_object_list(box, src=leader)
            if box[0] is not None:
                return f"stage {stage} (rank {leader}): {box[0]}"
        return None

    def _send_own_stage(self, plan: SyncPlan, stage: int) -> str | None:
        """Every TP rank of the stage streams (the all-gathers); the leader sends. After a
        failure the leader still streams to the end, so its TP peers are never left waiting."""
        leads = ps.get_tensor_model_parallel_rank() == 0
        error = None
        if leads:
            if self._sender is None:
                self._sender = StageSender(self.store_address, stage)
            sole = self._leaders is None or len(self._leaders) == 1
            error = self._attempt_sending(lambda: self._sender.begin(plan, sole_sender=sole))
        for bucket in _stage_buckets(self.model, self.layout, self.bucket_bytes):
            if leads and error is None:
                error = self._attempt_sending(lambda bucket=bucket: self._sender.send(bucket))
        if leads and error is None:
            error = self._attempt_sending(self._sender.finish)
        return None if error is None else f"{type(error).__name__}: {error}"

    def _attempt_sending(self, work) -> Exception | None:
        """``work()``; on an error the group is left at once (a broadcast still waiting in it
        is torn down) and the error returned, to be reported to every rank."""
        error = _attempt(work)
        if error is not None:
            self._sender.abandon()
        return error

    def _finish(self, failure: str | None, version: int) -> None:
        """Rank 0: the version once every stage is in, or the sync abandoned."""
        if failure is not None:
            self.engine.abandon_sync()
            raise WeightSyncError(f"weight sync abandoned: {failure}")
        self.engine.finish_sync(version)

    def _sync_through_rank0(self, version: int) -> None:
        """Every bucket into rank 0's engine, then the version. An engine error on rank 0
        lets the other ranks finish streaming, then is raised on every rank."""
        failures = []

        def consume(bucket):
            if not failures:
                error = _attempt(lambda: self.engine.update_weights(bucket))
                if error is not None:
                    failures.append(error)

        def finish():
            if failures:
                raise failures[0]
            self.engine.update_weights([], version=version)

        consume_here = consume if is_rank0() else None
        for_each_bucket_on_rank0(self.model, self.layout, consume_here, self.bucket_bytes)
        from_rank0(finish)

    def close(self) -> None:
        """Leave this rank's weight-update group (if it leads a stage)."""
        if self._sender is not None:
            self._sender.close()


def _attempt(work) -> Exception | None:
    """``work()``; the error it raised (to be reported to every rank), or None."""
    try:
        work()
    except Exception as error:  # reported on every rank by the caller
        return error
    return None


def sync_weights(
    model, layout: Qwen3Layout, engine, version: int, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> None:
    """One sync (collective over every rank; ``engine`` on rank 0, None elsewhere), its
    weight-update groups left afterwards. A run keeps a ``WeightSync`` instead."""
    weights = WeightSync(model, layout, engine, bucket_bytes)
    try:
        weights.sync(version)
    finally:
        weights.close()
