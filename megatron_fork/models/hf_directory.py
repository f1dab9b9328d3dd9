"""Write a Hugging Face model directory: config, sharded safetensors with their index, and the
small files that travel with a model (tokenizer, generation config), as one unit.

Weights are written shard by shard as they stream in (a writer holds at most one shard), by
one or several writers (e.g. one per pipeline stage) whose shards are numbered together at the
end: ``model-00001-of-0000N.safetensors`` plus ``model.safetensors.index.json``, or a single
``model.safetensors`` when one shard holds everything, as ``save_pretrained`` does.
"""

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from megatron_fork.atomic_files import directory_written_atomically
from megatron_fork.models.hf_weights import INDEX_FILE, SINGLE_FILE

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
HF_METADATA_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
"""The non-weight files of a model folder that are carried along with its weights."""


@dataclass(frozen=True)
class ShardRecord:
    """One written shard: its temporary file name, the tensors in it and their bytes."""

    file: str
    names: tuple[str, ...]
    nbytes: int


class SafetensorsShardWriter:
    """Writes streamed (name, tensor) pairs into shards of at most ``max_shard_bytes`` (a
    larger tensor gets a shard of its own) under temporary names ``{prefix}-{k}``."""

    def __init__(self, directory: str | Path, prefix: str, max_shard_bytes: int):
        if max_shard_bytes < 1:
            raise ValueError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
        self._directory, self._prefix, self._max = Path(directory), prefix, max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self.records: list[ShardRecord] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + nbytes > self._max:
            self._flush()
        self._pending[name] = tensor.detach().to("cpu").contiguous()
        self._pending_bytes += nbytes

    def close(self) -> list[ShardRecord]:
        self._flush()
        return self.records

    def _flush(self) -> None:
        if not self._pending:
            return
        file = f"{self._prefix}-{len(self.records):05d}.safetensors.part"
        save_file(self._pending, str(self._directory / file), metadata={"format": "pt"})
        self.records.append(ShardRecord(file, tuple(self._pending), self._pending_bytes))
        self._pending, self._pending_bytes = {}, 0


def name_shards(directory: str | Path, records: Iterable[ShardRecord]) -> None:
    """Give the shards of all writers (in model order) their final names, and write the index
    when there is more than one."""
    directory, records = Path(directory), list(records)
    if len(records) == 1:
        os.replace(directory / records[0].file, directory / SINGLE_FILE)
        return
    weight_map = {}
    for i, record in enumerate(records, start=1):
        final = f"model-{i:05d}-of-{len(records):05d}.safetensors"
        os.replace(directory / record.file, directory / final)
        weight_map.update({name: final for name in record.names})
    index = {"metadata": {"total_size": sum(r.nbytes for r in records)}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def copy_hf_metadata(source: str | Path, destination: str | Path) -> list[str]:
    """Copy the ``HF_METADATA_FILES`` that ``source`` has into ``destination``; their names."""
    source, destination = Path(source), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    copied = [name for name in HF_METADATA_FILES if (source / name).is_file()]
    for name in copied:
        shutil.copyfile(source / name, destination / name)
    return copied


def save_hf_model(
    directory: str | Path,
    hf_config,
    weights: Mapping[str, torch.Tensor],
    files: Mapping[str, str | Path] = (),
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """One process writes a whole model folder. ``files`` maps names in the directory to files
    copied in (e.g. the tokenizer.json). An existing ``directory`` is replaced."""
    with directory_written_atomically(directory) as tmp:
        hf_config.save_pretrained(tmp)
        writer = SafetensorsShardWriter(tmp, "model", max_shard_bytes)
        for name, tensor in weights.items():
            writer.add(name, tensor)
        name_shards(tmp, writer.close())
        for name, source in dict(files).items():
            shutil.copyfile(source, tmp / name)
    return Path(directory)
