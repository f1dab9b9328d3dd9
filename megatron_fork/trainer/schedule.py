"""Arguments of Megatron's ``forward_backward_func`` for a list of micro-batch shards."""

from megatron_fork.trainer.parallel_groups import LossGroups


def schedule_args(model, shards, groups: LossGroups) -> dict:
    """model/num_microbatches/seq_length/micro_batch_size for ``get_forward_backward_func()``.
    ``shards`` are this rank's CP shards ([b, s / CP] ``tokens``)."""
    if not shards:
        raise ValueError("no micro-batches: an optimizer step needs at least one.")
    return dict(
        model=[model],
        num_microbatches=len(shards),
        # Megatron wants the full sequence length and divides by CP itself.
        seq_length=shards[0].tokens.shape[1] * groups.cp_size,
        micro_batch_size=shards[0].tokens.shape[0],
    )
