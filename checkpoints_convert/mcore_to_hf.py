"""Megatron distributed checkpoint (converted or written by the RL trainer; optimizer state is
not read) -> Hugging Face Qwen3 folder with sharded safetensors, index, config, generation
config and the tokenizer files.

The checkpoint is loaded at this launch's TP/PP (any layout: Megatron reshards); each pipeline
stage's first TP rank writes its own shards as its parameters stream out through the mapping
(TP shards all-gathered one parameter at a time), so no rank ever holds more than its shard,
one full parameter and one output shard. Rank 0 numbers the shards, writes the index and the
metadata, reads the result back against the config, and renames the folder into place.
"""

import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset
from torch.distributed.checkpoint.api import CheckpointException
from transformers import GenerationConfig

from checkpoints_convert.checks import check_output, check_parallel_layout
from megatron_fork.atomic_files import directory_written_atomically
from megatron_fork.models.hf_directory import (
    DEFAULT_MAX_SHARD_BYTES,
    SafetensorsShardWriter,
    copy_hf_metadata,
    name_shards,
)
from megatron_fork.models.hf_mapping import Qwen3Layout, iter_hf_weights, stage_hf_names
from megatron_fork.models.hf_weights import HFWeights, check_weights_match_config
from megatron_fork.parallel.rank0 import barrier, from_rank0, is_rank0
from megatron_fork.trainer.actor import megatron_model, read_hf_config
from megatron_fork.trainer.checkpoint import hf_metadata_dir, load_model_weights
from megatron_fork.trainer.dcp_metadata import (
    check_storage_files,
    read_checkpoint_metadata,
    stored_dtype,
)
from megatron_fork.trainer.trainer_config import ParallelConfig

EMBEDDING_KEY = "embedding.word_embeddings.weight"


def _metadata_source(mcore_dir: Path, hf_metadata: str | Path | None) -> Path:
    source = Path(hf_metadata) if hf_metadata else hf_metadata_dir(mcore_dir)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(
            f"{source}: no config.json. Checkpoints written by this project carry their Hugging "
            "Face config and tokenizer in hf/; for another one pass --hf-metadata DIR (the base "
            "model's folder)"
        )
    return source


def _write_stage_shards(model, layout, tmp: Path, dtype, max_shard_bytes: int, on_param) -> list:
    """Every rank streams its stage (the TP all-gathers are collective); the stage's first TP
    rank of the first data-parallel replica writes, every tensor in ``dtype`` (Megatron keeps
    some norms in fp32 whatever the model's dtype; a HF folder has one). Returns (stage,
    shard records, write error). A write error (disk full, permissions) does not stop the
    stream, whose all-gathers the stage's other ranks are waiting in: it is reported after."""
    module = getattr(model, "module", model)
    offset = get_transformer_layer_offset(module.config)
    stage = ps.get_pipeline_model_parallel_rank()
    writes = ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
    writer = SafetensorsShardWriter(tmp, f"stage{stage:04d}", max_shard_bytes)
    tp_group = ps.get_tensor_model_parallel_group()
    error = None
    for name, tensor in iter_hf_weights(model, layout, tp_group, offset):
        if writes and error is None:
            error = _os_error(writer.add, name, tensor.to(dtype))
        if on_param is not None:
            on_param(name)
    if writes and error is None:
        error = _os_error(writer.close)
    return [(stage, writer.records, error)] if writes else []


def _os_error(write, *args) -> str | None:
    try:
        write(*args)
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    return None


def _all_records_in_stage_order(local: list) -> tuple[list, list[str]]:
    """On rank 0: every stage's shard records in stage order, and the stages' write errors."""
    gathered = [None] * dist.get_world_size() if is_rank0() else None
    dist.gather_object(local, gathered, dst=0)
    if not is_rank0():
        return [], []
    by_stage = sorted(entry for rank_entries in gathered for entry in rank_entries)
    records = [record for _, stage_records, _ in by_stage for record in stage_records]
    errors = [f"stage {stage}: {error}" for stage, _, error in by_stage if error]
    return records, errors


def _write_metadata(tmp: Path, source: Path, hf_config, dtype: torch.dtype) -> None:
    """Config (byte for byte, unless the weights' dtype differs from the one it names),
    generation config (made from the config when the source has none), tokenizer files."""
    copy_hf_metadata(source, tmp)
    config = json.loads((tmp / "config.json").read_text())
    key = "dtype" if "dtype" in config else "torch_dtype"
    named = config.get(key) or "float32"  # no dtype in a config means float32
    if named != str(dtype).removeprefix("torch."):
        config[key] = str(dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if not (tmp / "generation_config.json").is_file():
        GenerationConfig.from_model_config(hf_config).save_pretrained(tmp)


def _load_failure(mcore_dir: Path, source: Path, error: BaseException) -> str:
    """One line for a failed load: a refused pickle, a model that does not fit, or else."""
    text = str(error)
    last_line = text.strip().splitlines()[-1] if text.strip() else type(error).__name__
    if "Weights only load failed" in text or "UnpicklingError" in text:
        return (
            f"{mcore_dir}: refused, the checkpoint holds pickled objects other than plain "
            "data (loaded weights-only); do not load checkpoints from untrusted sources"
        )
    if any(sign in text for sign in ("shape mismatch", "Missing keys", "Unexpected keys")):
        return (
            f"{mcore_dir}: the checkpoint does not fit the model {source}/config.json "
            f"describes ({last_line}); pass the config it was trained with"
        )
    return f"{mcore_dir}: could not be loaded ({type(error).__name__}: {last_line})"


def _finish_folder(tmp: Path, written: tuple, source: Path, hf_config, dtype) -> None:
    """Rank 0: final shard names and index, metadata, and a read-back check of the result."""
    records, errors = written
    if errors:
        raise OSError(f"writing {tmp} failed: " + "; ".join(errors))
    name_shards(tmp, records)
    _write_metadata(tmp, source, hf_config, dtype)
    check_weights_match_config(HFWeights(tmp), hf_config)


def convert_mcore_to_hf(
    mcore_dir: str | Path,
    out: str | Path,
    parallel: ParallelConfig,
    force: bool = False,
    hf_metadata: str | Path | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    on_param: Callable[[str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> Path:
    """Collective over the TP x PP ranks (parallel state initialised for ``parallel``)."""
    mcore_dir = Path(mcore_dir)
    check_output(out, force, mcore_dir)
    metadata = read_checkpoint_metadata(mcore_dir)  # refuses a crafted index before any load
    check_storage_files(mcore_dir, metadata)
    source = _metadata_source(mcore_dir, hf_metadata)
    hf_config = read_hf_config(source)
    check_parallel_layout(hf_config, parallel.tensor_parallel, parallel.pipeline_parallel)
    dtype = stored_dtype(metadata, EMBEDDING_KEY)
    model = megatron_model(hf_config, parallel, initialize=False, dtype=dtype)
    try:
        load_model_weights(mcore_dir, model)
    except (FileNotFoundError, ValueError):
        raise  # already named: a missing or truncated file
    except (Exception, CheckpointException) as error:  # PyTorch's is a BaseException
        raise ValueError(_load_failure(mcore_dir, source, error)) from error
    layout = Qwen3Layout.from_hf_config(hf_config)
    if on_start is not None:
        offset = get_transformer_layer_offset(model.config)
        on_start(len(stage_hf_names(model, layout, offset)))
    with directory_written_atomically(out, is_rank0(), barrier) as tmp:
        records = _write_stage_shards(model, layout, tmp, dtype, max_shard_bytes, on_param)
        written = _all_records_in_stage_order(records)
        from_rank0(lambda: _finish_folder(tmp, written, source, hf_config, dtype))
    return Path(out)
