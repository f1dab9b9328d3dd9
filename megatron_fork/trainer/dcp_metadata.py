"""Load Megatron (torch_dist) checkpoints without trusting them.

PyTorch's distributed checkpoint unpickles two things unrestricted on load, so a crafted
checkpoint could run code: its ``.metadata`` index, and every byte entry (the layers'
``_extra_state``), which ``DefaultLoadPlanner.load_bytes`` reads with
``torch.load(weights_only=False)``. ``read_checkpoint_metadata`` unpickles the index with an
allowlist first (PyTorch's checkpoint metadata types, ``torch.Size``, dtypes, layouts, memory
formats) and refuses anything else by name; ``byte_entries_weights_only`` makes the byte
entries load with ``weights_only=True`` for the duration of a load. Tensors are raw bytes, and
Megatron reads ``common.pt`` with ``torch.load``, whose default is ``weights_only=True`` on the
torch this package requires (>= 2.6).
"""

import io
import pickle
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import ReadItem

DIST_METADATA_FILE = ".metadata"
_DCP = "torch.distributed.checkpoint"
_ALLOWED_GLOBALS = {
    *((f"{_DCP}.metadata", name) for name in (
        "Metadata", "StorageMeta", "MetadataIndex", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "_MEM_FORMAT_ENCODING",
    )),
    *((f"{_DCP}.planner", name) for name in (
        "SavePlan", "WriteItem", "WriteItemType", "TensorWriteData",
    )),
    (f"{_DCP}.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # layout name -> torch layout
}  # fmt: skip
"""Every global a torch_dist index refers to (plain data classes and enums; no function that
acts): found by recording the lookups of real checkpoints, with and without optimizer state,
the distributed optimizer's (``dp_reshardable``) included; dtypes pass by value below."""
_TORCH_VALUE_TYPES = (torch.dtype, torch.layout, torch.memory_format)


class _AllowlistUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_VALUE_TYPES):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


def read_checkpoint_metadata(path: str | Path):
    """The checkpoint's ``torch.distributed.checkpoint.Metadata``, unpickled with an
    allowlist; a ValueError names the checkpoint when it holds anything else."""
    file = Path(path) / DIST_METADATA_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path}: not a Megatron distributed checkpoint (no {file.name})")
    try:
        return _AllowlistUnpickler(io.BytesIO(file.read_bytes())).load()
    except Exception as error:
        raise ValueError(
            f"{file}: refused to load this checkpoint's metadata ({error}); it is corrupt or "
            "was not written by PyTorch's distributed checkpoint"
        ) from error


def check_storage_files(path: str | Path, metadata) -> None:
    """Every data file the index points into is there and long enough (a missing or truncated
    ``.distcp`` named, instead of a failure deep inside the load)."""
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, size in sorted(needed.items()):
        file = Path(path) / name
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing from the checkpoint (its index needs it)")
        if file.stat().st_size < size:
            raise ValueError(
                f"{file}: truncated ({file.stat().st_size} bytes, the index needs {size})"
            )


def stored_dtype(metadata, key: str) -> torch.dtype:
    """The dtype a tensor was saved in (e.g. ``embedding.word_embeddings.weight``)."""
    entry = metadata.state_dict_metadata.get(key)
    if entry is None:
        raise ValueError(f"the checkpoint holds no tensor {key!r}: not a GPT model checkpoint?")
    return entry.properties.dtype


def _load_bytes_weights_only(self, read_item: ReadItem, value: io.BytesIO) -> None:
    """``DefaultLoadPlanner.load_bytes`` (torch 2.6 - 2.13) with ``weights_only=True``."""
    loaded = torch.load(value, weights_only=True)
    if self.flatten_state_dict:
        from torch.distributed.checkpoint._traverse import set_element

        set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
    else:
        self.state_dict[read_item.dest_index.fqn] = loaded


@contextmanager
def byte_entries_weights_only():
    """During the block, checkpoint byte entries unpickle with ``weights_only=True`` (a
    process-wide switch of PyTorch's planner method, restored on exit; loads are collective
    and not concurrent within a process)."""
    original = DefaultLoadPlanner.load_bytes
    DefaultLoadPlanner.load_bytes = _load_bytes_weights_only
    try:
        yield
    finally:
        DefaultLoadPlanner.load_bytes = original
