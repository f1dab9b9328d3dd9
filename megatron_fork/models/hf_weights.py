"""The weights of a Hugging Face model folder, read lazily, tensor by tensor, from safetensors.

A folder holds one ``model.safetensors`` or shards listed in ``model.safetensors.index.json``.
Opening checks every file's header (a missing or truncated shard fails here, by name, before
any weight is read); a tensor is read only when asked for, so a loader holds one tensor at a
time, not the model. Pickled weights (``*.bin``) are refused: only safetensors are read.
"""

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _open_shard(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard missing (re-download or re-convert the model)")
    try:
        return safe_open(str(path), framework="pt")
    except SafetensorError as error:
        raise ValueError(
            f"{path}: not a readable safetensors file ({error}); the shard is corrupt or "
            "truncated: re-download or re-convert it"
        ) from error


def _files_by_name(directory: Path) -> dict[str, str]:
    """HF tensor name -> file name, from the index or the single file."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{index}: not a safetensors index ({error})") from error
        return dict(weight_map)
    if (directory / SINGLE_FILE).is_file():
        return {}  # filled from the file's header
    found = sorted(p.name for p in directory.glob("*.bin")) if directory.is_dir() else []
    hint = f" (found {found}: pickled weights are not read; save them as safetensors)" * bool(found)
    raise FileNotFoundError(f"{directory}: no {SINGLE_FILE} nor {INDEX_FILE}{hint}")


@dataclass(frozen=True)
class _StoredTensor:
    file: str
    shape: tuple[int, ...]
    dtype_code: str


def _stored_tensors(directory: Path, files_by_name: dict[str, str]) -> dict[str, _StoredTensor]:
    """Every tensor's file, shape and dtype, from the headers (each file opened once, closed)."""
    files = sorted(set(files_by_name.values())) or [SINGLE_FILE]
    stored = {}
    for file in files:
        with _open_shard(directory / file) as handle:
            for name in handle.keys():
                view = handle.get_slice(name)
                stored[name] = _StoredTensor(file, tuple(view.get_shape()), view.get_dtype())
    for name, file in files_by_name.items():
        if name not in stored or stored[name].file != file:
            raise ValueError(
                f"{directory / INDEX_FILE} places {name!r} in {file}, which does not hold "
                "it: the index and the shards do not match"
            )
    return {name: stored[name] for name in files_by_name} if files_by_name else stored


class HFWeights(Mapping):
    """Read-only mapping HF name -> tensor over a model folder's safetensors.

    Each read opens the tensor's file, copies the tensor out and closes the file, so the
    memory-mapped pages of tensors already read do not pile up in the process (reading a
    whole model through one open mapping leaves all of it resident)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._stored = _stored_tensors(self.directory, _files_by_name(self.directory))

    def __getitem__(self, name: str) -> torch.Tensor:
        with safe_open(str(self.directory / self._stored[name].file), framework="pt") as handle:
            return handle.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape, without reading the tensor."""
        return self._stored[name].shape

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype, without reading the tensor."""
        code = self._stored[name].dtype_code
        if code not in _DTYPES:
            raise ValueError(f"{self.directory}: {name!r} is stored as {code}, not a float type")
        return _DTYPES[code]


def expected_hf_shapes(hf_config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a folder for ``hf_config`` must hold, from Hugging Face's
    own Qwen3 built on the meta device (no memory). A tied ``lm_head`` is not stored."""
    from transformers import Qwen3ForCausalLM

    with torch.device("meta"):
        model = Qwen3ForCausalLM(hf_config)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if getattr(hf_config, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)
    return shapes


def check_weights_match_config(weights: HFWeights, hf_config) -> None:
    """Every tensor the config implies is there with its shape, and nothing else (a tied
    ``lm_head`` copy is tolerated and ignored), or a ValueError naming the differences."""
    expected = expected_hf_shapes(hf_config)
    tolerated = {"lm_head.weight"} if getattr(hf_config, "tie_word_embeddings", False) else set()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected) - tolerated)
    wrong = [
        f"{name}: config {expected[name]}, file {weights.shape(name)}"
        for name in sorted(set(expected) & set(weights))
        if weights.shape(name) != expected[name]
    ]
    problems = [
        f"{label} ({len(items)}): {items[:4]}{' ...' * (len(items) > 4)}"
        for label, items in (
            ("missing", missing),
            ("not in the config", unexpected),
            ("shape", wrong),
        )
        if items
    ]
    if problems:
        raise ValueError(
            f"{weights.directory}: config.json and the weights do not match: "
            + "; ".join(problems)
            + ". Use the config.json that came with these weights."
        )
