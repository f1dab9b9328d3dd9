"""Objects that live on global rank 0 alone (the token-table writer, the rollout engine). They
are built (and used) through ``from_rank0``, so a failure there (an unwritable folder, no memory
for the engine) is raised on every rank at once instead of leaving the others waiting in their
next collective until the timeout."""

from megatron_fork.parallel.rank0 import from_rank0


def made_on_rank0(make):
    """``make()`` on rank 0, its result kept there (None on the other ranks: it need not be
    picklable). Collective: an error is raised on every rank, as ``from_rank0`` raises it."""
    made = []
    from_rank0(lambda: made.append(make()))  # sends only "done" (None) or the error
    return made[0] if made else None
