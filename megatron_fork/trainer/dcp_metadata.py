"""Read a Megatron (torch_dist) checkpoint's ``.metadata`` without trusting it.

PyTorch's distributed checkpoint stores its index as a pickle and unpickles it unrestricted on
load, so a crafted checkpoint could run code. Before any load, this module unpickles the index
with an allowlist (PyTorch's checkpoint metadata types, ``torch.Size``, dtypes, layouts and
memory formats) and refuses anything else by name. The rest of the format is safe to read:
tensors are raw bytes, and Megatron reads its ``common.pt`` with ``torch.load``, whose default
is ``weights_only=True`` on the torch this package requires (>= 2.6).
"""

import io
import pickle
from pathlib import Path

import torch

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
acts): found by recording the lookups of real checkpoints, with and without optimizer state."""
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


def stored_dtype(metadata, key: str) -> torch.dtype:
    """The dtype a tensor was saved in (e.g. ``embedding.word_embeddings.weight``)."""
    entry = metadata.state_dict_metadata.get(key)
    if entry is None:
        raise KeyError(f"the checkpoint holds no tensor {key!r}: not a GPT model checkpoint?")
    return entry.properties.dtype
