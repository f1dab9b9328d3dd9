"""Arguments of Megatron's ``forward_backward_func`` for a list of micro-batch shards."""

from megatron.core.utils import get_model_config

from megatron_fork.trainer.parallel_groups import LossGroups


def schedule_args(model, shards, groups: LossGroups) -> dict:
    """model/num_microbatches/seq_length/micro_batch_size for ``get_forward_backward_func()``.
    ``shards`` are this rank's CP shards ([b, s / CP] ``tokens``); packed ones ([1, t / CP])
    may differ in length, which a pipeline carries with ``variable_seq_lengths``."""
    if not shards:
        raise ValueError("no micro-batches: an optimizer step needs at least one.")
    lengths = {shard.tokens.shape[1] for shard in shards}
    config = get_model_config(model)
    if (
        len(lengths) > 1
        and config.pipeline_model_parallel_size > 1
        and not config.variable_seq_lengths
    ):
        raise ValueError(
            "micro-batches of different lengths through a pipeline need the model config's "
            "variable_seq_lengths=True (megatron_options.transformer_options sets it for PP > 1)"
        )
    return dict(
        model=[model],
        num_microbatches=len(shards),
        # Megatron wants the full sequence length and divides by CP itself.
        seq_length=shards[0].tokens.shape[1] * groups.cp_size,
        micro_batch_size=shards[0].tokens.shape[0],
    )
