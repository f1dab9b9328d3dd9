"""Checkpoints in Megatron's distributed format: model and optimizer shards of every rank,
readable at any TP/PP layout (Megatron reshards on load), plus a small JSON of trainer state
and the model's Hugging Face config and tokenizer files (``hf/``).

A checkpoint is written into ``step_XXXXXXXX.tmp`` and renamed to ``step_XXXXXXXX`` only when
every rank has finished, then ``latest`` is replaced atomically: a run killed mid-save leaves the
previous checkpoint as the latest one and no half-written directory under a final name.
Entry scripts must guard their body with ``if __name__ == "__main__":`` (the async writer
starts helper processes with the spawn method, which re-imports the main module).
"""

import json
import shutil
from pathlib import Path

from megatron.core import dist_checkpointing

from megatron_fork.atomic_files import directory_written_atomically, write_text_atomically
from megatron_fork.models.hf_directory import copy_hf_metadata
from megatron_fork.parallel.rank0 import barrier, from_rank0, is_rank0
from megatron_fork.trainer.dcp_metadata import (
    DIST_METADATA_FILE,
    byte_entries_weights_only,
    check_storage_files,
    read_checkpoint_metadata,
)

LATEST_FILE = "latest"
TRAINER_STATE_FILE = "trainer_state.json"
HF_METADATA_DIR = "hf"


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def _sharded_state(model, optimizer, is_loading: bool) -> dict:
    module = getattr(model, "module", model)  # a DDP wrapper holds the model in .module
    state = {"model": module.sharded_state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state["model"], is_loading=is_loading)
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
        dist_checkpointing.save(_sharded_state(model, optimizer, is_loading=False), str(tmp))
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
    if is_rank0():
        write_text_atomically(Path(root) / LATEST_FILE, final.name)
    barrier()
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
        loaded = dist_checkpointing.load(state, str(path))
    getattr(model, "module", model).load_state_dict(loaded["model"])
    if optimizer is not None:
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
