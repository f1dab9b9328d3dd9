"""Whether a checkpoint holds what a load asks of it, checked against its index before any
data is read, and the one difference tolerated: ``_extra_state`` across layer specs.

Transformer Engine modules (``TENorm`` -> ``te.pytorch.RMSNorm``, TE linears, TE attention)
carry ``_extra_state`` in their state dict, which Megatron checkpoints as a ``ShardedObject``
(``transformer/utils.py`` ``make_sharded_tensors_for_checkpoint``); the local spec's torch norms
and attention have none. A base model converted on a CPU node (local spec) must load into the
TE model on the GPUs, so requested ``_extra_state`` objects that the checkpoint lacks are
dropped from the request and may be missing from the loaded state (the modules keep their
own). The other way round needs nothing: what a model does not ask for is never read. Anything
else missing, unexpected or of another global shape is refused, naming it.
"""

from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

EXTRA_STATE_SUFFIX = "_extra_state"


def drop_absent_extra_state(model_state: dict, metadata) -> set[str]:
    """Remove from the (flat) requested model state the ``_extra_state`` objects that the
    checkpoint (its DCP ``metadata``) does not hold; returns their state-dict names."""
    stored = metadata.state_dict_metadata
    absent = {
        name
        for name, entry in model_state.items()
        if isinstance(entry, ShardedObject)
        and entry.key.endswith(EXTRA_STATE_SUFFIX)
        and entry.unique_key not in stored
    }
    for name in absent:
        del model_state[name]
    return absent


def load_model_state(path, module, state: dict, absent: set[str]) -> None:
    """``load_state_dict`` that lets ``_extra_state`` entries be missing when the checkpoint
    lacked them (``absent``) or the module never asked for them (Megatron's
    ``TEDotProductAttention.sharded_state_dict`` returns nothing unless its softmax is
    learnable, megatron-core 0.16.1 ``extensions/transformer_engine.py:1436-1454``; TE's own
    hook hides that key today, this does not rely on it); anything else missing or unexpected
    raises."""
    result = module.load_state_dict(state, strict=False)
    unrequested = {
        key for key in result.missing_keys if key.endswith(EXTRA_STATE_SUFFIX) and key not in state
    }
    missing = sorted(set(result.missing_keys) - absent - unrequested)
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{path}: the checkpoint does not match this model: missing {missing}, "
            f"unexpected {sorted(result.unexpected_keys)}"
        )


def _misfits(requested, metadata) -> list[str]:
    """Keys of the requested tensors and objects that the checkpoint lacks, or holds in
    another global shape (where Megatron does not allow that, e.g. for the padded vocabulary)."""
    stored = metadata.state_dict_metadata
    misfits = []
    for entry in nested_values(requested):
        if isinstance(entry, ShardedObject) and entry.unique_key not in stored:
            misfits.append(entry.unique_key)
        elif isinstance(entry, ShardedTensor):
            size = getattr(stored.get(entry.key), "size", None)
            if size is None or (
                not entry.allow_shape_mismatch and tuple(size) != tuple(entry.global_shape)
            ):
                misfits.append(entry.key)
    return misfits


def check_model_fits(path, model_state, metadata) -> None:
    misfits = _misfits(model_state, metadata)
    if misfits:
        raise ValueError(
            f"{path}: the checkpoint does not fit the model: it lacks weights the model needs, "
            f"or holds them in another shape ({len(misfits)}: {misfits[:5]}); a checkpoint of "
            "another model or config?"
        )


def check_optimizer_fits(path, optimizer_state, metadata) -> None:
    misfits = _misfits(optimizer_state, metadata)
    if misfits:
        raise ValueError(
            f"{path}: its optimizer state does not fit this run's optimizer ({len(misfits)} "
            f"entries missing or shaped differently, e.g. {misfits[0]!r}). Optimizer state "
            "resumes only into the same optimizer (parallel.distributed_optimizer) and, for the "
            "distributed optimizer, at the TP/PP layout it was saved at (any DP). To change "
            "them, start from the weights alone: load_model_weights, or a new run with this "
            "checkpoint as base_model."
        )
