"""Checkpoints in Megatron's distributed format: model and optimizer shards of every rank,
the weights readable at any TP/PP layout (Megatron reshards on load; the distributed
optimizer's state see below), plus a small JSON of trainer state and the model's Hugging Face
config and tokenizer files (``hf/``).

A checkpoint is written into ``step_XXXXXXXX.tmp`` and renamed to ``step_XXXXXXXX`` only when
every rank has finished, then ``latest`` is replaced atomically: a run killed mid-save leaves the
previous checkpoint as the latest one and no half-written directory under a final name.
Entry scripts must guard their body with ``if __name__ == "__main__":`` (the async writer
starts helper processes with the spawn method, which re-imports the main module).

Format of the distributed optimizer's state: ``dp_reshardable`` (``SHARDING_METADATA``, what
Megatron-LM, NeMo and Megatron-Bridge pass by default). Each DP rank writes and reads its own
slice of the flat fp32 main-weight and Adam buffers, with no gather and no extra memory. The
state resumes at any DP size but only at the TP/PP layout it was saved at (and only into the
distributed optimizer); a resume that does not fit is refused by name before anything is read.
The model weights are independent of that choice and load at any TP/PP/DP layout, into either
optimizer. Megatron's other choice, ``fully_reshardable``, would make the optimizer state load
at any layout too, but on every save all-gathers each TP/PP shard's whole optimizer state
(12 bytes per parameter: ~48 GB for Qwen3-8B at TP=2) into the host memory of every DP rank,
and on every load has each rank read all of it (the Qwen3-8B recipe's 64 ranks would read
~3 TB per resume). A layout change is rare (resumes use the recipe's layout); it keeps the
weights and starts the optimizer afresh. (Without this metadata megatron-core 0.16.1 falls
back to the deprecated ``fully_sharded_model_space``, whose ``flattened_range`` tensors its
own checkpointing refuses on save and on load.)

Checkpoints move between layer specs (a base model converted on CPU into the Transformer Engine
model, a TE checkpoint read on CPU): ``checkpoint_fit`` checks a load's request against the
checkpoint's index first and tolerates exactly the ``_extra_state`` that TE modules carry.
"""

import json
import shutil
from pathlib import Path

import torch
from megatron.core import dist_checkpointing

from megatron_fork.atomic_files import directory_written_atomically, write_text_atomically
from megatron_fork.models.hf_directory import copy_hf_metadata
from megatron_fork.parallel.rank0 import barrier, from_rank0, is_rank0
from megatron_fork.trainer.checkpoint_fit import (
    check_model_fits,
    check_optimizer_fits,
    drop_absent_extra_state,
    load_model_state,
)
from megatron_fork.trainer.dcp_metadata import (
    DIST_METADATA_FILE,
    byte_entries_weights_only,
    check_storage_files,
    read_checkpoint_metadata,
)

LATEST_FILE = "latest"
TRAINER_STATE_FILE = "trainer_state.json"
HF_METADATA_DIR = "hf"
SHARDING_METADATA = {
    "distrib_optim_sharding_type": "dp_reshardable",
    "singleton_local_shards": False,
    "chained_optim_avoid_prefix": True,
}
"""What the model's and the optimizer's ``sharded_state_dict`` are told, as Megatron-LM's
``_build_sharded_state_dict_metadata`` does (it is also saved as the checkpoint's content
metadata). Megatron adds its ``dp_cp_group`` to the dict it is given, so each call gets a copy."""


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def _sharded_state(model, optimizer, is_loading: bool) -> dict:
    module = getattr(model, "module", model)  # a DDP wrapper holds the model in .module
    metadata = dict(SHARDING_METADATA)
    state = {"model": module.sharded_state_dict(metadata=metadata)}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(
            state["model"], is_loading=is_loading, metadata=metadata
        )
    return state


def write_checkpoint(
    directory, model, optimizer=None, trainer_state: dict | None = None, hf_metadata=None
) -> Path:
    """Collective: every rank calls it. Writes the model (and optimizer) shards of every rank
    into ``directory`` as one unit (an existing one is replaced), with the Hugging Face config
    and tokenizer files of ``hf_metadata`` (a model folder) in its ``hf/`` subfolder, so the
    checkpoint alone describes its model (conversion back to Hugging Face needs nothing else).
    """
    with directory_written_atomically(directory, is_rank0(), barrier) as tmp:
        state = _sharded_state(model, optimizer, is_loading=False)
        dist_checkpointing.save(state, str(tmp), content_metadata=dict(SHARDING_METADATA))
        from_rank0(lambda: _write_small_files(tmp, trainer_state, hf_metadata))
    return Path(directory)


def _write_small_files(tmp: Path, trainer_state: dict | None, hf_metadata) -> None:
    if hf_metadata is not None:
        copy_hf_metadata(hf_metadata, tmp / HF_METADATA_DIR)
    if trainer_state is not None:
        text = json.dumps(trainer_state, indent=2, sort_keys=True)
        (tmp / TRAINER_STATE_FILE).write_text(text)


def save_checkpoint(
    root, step: int, model, optimizer=None, trainer_state: dict | None = None, hf_metadata=None
):
    """Collective: the step's checkpoint under ``root``, then ``latest`` points at it. Returns
    the checkpoint's directory."""
    final = checkpoint_dir(root, step)
    write_checkpoint(final, model, optimizer, {"step": step, **(trainer_state or {})}, hf_metadata)
    latest = Path(root) / LATEST_FILE  # rank 0's error, if any, raised on every rank
    from_rank0(lambda: write_text_atomically(latest, final.name))
    return final


def is_megatron_checkpoint(path) -> bool:
    """A directory Megatron's distributed checkpointing wrote (a converted model or a trainer
    checkpoint)."""
    return (Path(path) / DIST_METADATA_FILE).is_file()


def hf_metadata_dir(model_source) -> Path:
    """Where a model source's config.json and tokenizer files are: a Hugging Face folder
    itself, or a Megatron checkpoint's ``hf/`` subfolder."""
    path = Path(model_source)
    return path / HF_METADATA_DIR if is_megatron_checkpoint(path) else path


def load_model_weights(path, model) -> None:
    """Collective: only the model's weights from a Megatron checkpoint (a converted one or a
    trainer's; its optimizer state is not read), at this run's layout."""
    _load(path, model, None)


def latest_checkpoint(root) -> Path | None:
    """The directory ``latest`` names, or None when there is no complete checkpoint."""
    pointer = Path(root) / LATEST_FILE
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if path.is_dir() else None


def load_checkpoint(path, model, optimizer=None) -> dict:
    """Collective: load a checkpoint directory into this rank's model (and optimizer), at this
    run's layout; returns the trainer state (with "step")."""
    path = Path(path)
    state_file = path / TRAINER_STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(
            f"{path} is not a complete checkpoint (no {TRAINER_STATE_FILE}); use "
            "latest_checkpoint(root) to find the newest complete one."
        )
    _load(path, model, optimizer)
    return json.loads(state_file.read_text())


def _load(path, model, optimizer) -> None:
    """The model (and optimizer) state of a checkpoint, with nothing in it unpickled beyond
    plain data (see ``dcp_metadata``)."""
    metadata = read_checkpoint_metadata(path)  # refuses an index that is not plain metadata
    check_storage_files(path, metadata)
    with byte_entries_weights_only():
        state = _sharded_state(model, optimizer, is_loading=True)
        absent = drop_absent_extra_state(state["model"], metadata)
        check_model_fits(path, state["model"], metadata)
        if optimizer is not None:
            check_optimizer_fits(path, state["optimizer"], metadata)
        loaded = dist_checkpointing.load(state, str(path))
    load_model_state(path, getattr(model, "module", model), loaded["model"], absent)
    if optimizer is not None:
        # The distributed optimizer copies the loaded main weights into its shards in place;
        # for fp32 weights a shard is a view of the parameter (megatron-core 0.16.1
        # distrib_optimizer.py:420-421, :940), which autograd refuses outside no_grad.
        with torch.no_grad():
            optimizer.load_state_dict(loaded["optimizer"])


def prune_checkpoints(root, keep: int) -> None:
    """Remove all but the newest ``keep`` complete checkpoints (rank 0 only; call after a
    save). The one ``latest`` names is never removed."""
    if not is_rank0():
        return
    latest = latest_checkpoint(root)
    complete = sorted(p for p in Path(root).glob("step_*") if p.suffix != ".tmp" and p.is_dir())
    for path in complete[:-keep]:
        if path != latest:
            shutil.rmtree(path, ignore_errors=True)
