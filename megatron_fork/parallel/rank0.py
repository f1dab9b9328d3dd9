"""Work done by global rank 0 alone, whose failure must reach every rank: the others would
otherwise wait for it in their next collective until the timeout."""

import torch.distributed as dist


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Every rank waits for the others; nothing without a process group."""
    if dist.is_initialized():
        dist.barrier()


def from_rank0(work):
    """``work()`` on rank 0, its result (picklable) on every rank. An error there is raised on
    every rank: the original on rank 0, a RuntimeError naming it on the others."""
    result, error = None, None
    if is_rank0():
        try:
            result = work()
        except Exception as caught:  # re-raised below, on every rank
            error = caught
    box = [(error is None, result if error is None else f"{type(error).__name__}: {error}")]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    ok, payload = box[0]
    if error is not None:
        raise error
    if not ok:
        raise RuntimeError(f"rank 0 failed: {payload}")
    return payload


def made_on_rank0(make):
    """``make()`` on rank 0, its result kept there (None on the other ranks: it need not be
    picklable, e.g. a writer or an engine). Collective: an error is raised on every rank, as
    ``from_rank0`` raises it."""
    made = []
    from_rank0(lambda: made.append(make()))  # sends only "done" (None) or the error
    return made[0] if made else None
