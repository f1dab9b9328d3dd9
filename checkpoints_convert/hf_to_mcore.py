"""Hugging Face Qwen3 folder -> Megatron distributed checkpoint at this launch's TP/PP.

Every rank builds only its own shard of the model and fills it parameter by parameter from
lazily read safetensors (one full parameter in memory at a time), then all ranks write the
torch_dist checkpoint together; it loads at any other layout (Megatron reshards on load).
The HF config and tokenizer files travel in the checkpoint's ``hf/`` folder.
"""

from collections.abc import Callable
from pathlib import Path

from megatron.core import parallel_state as ps
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from checkpoints_convert.checks import check_output, check_parallel_layout
from megatron_fork.models.hf_mapping import Qwen3Layout, load_hf_weights_
from megatron_fork.models.hf_weights import HFWeights, check_weights_match_config
from megatron_fork.trainer.actor import megatron_model, read_hf_config
from megatron_fork.trainer.checkpoint import write_checkpoint
from megatron_fork.trainer.trainer_config import ParallelConfig

EMBEDDING = "model.embed_tokens.weight"


def open_hf_source(hf_dir: str | Path, parallel: ParallelConfig):
    """The config and lazily read weights of ``hf_dir``, checked against each other and the
    layout before anything is built (no collective: every rank fails the same way)."""
    hf_config = read_hf_config(hf_dir)
    check_parallel_layout(hf_config, parallel.tensor_parallel, parallel.pipeline_parallel)
    weights = HFWeights(hf_dir)
    check_weights_match_config(weights, hf_config)
    return hf_config, weights


def convert_hf_to_mcore(
    hf_dir: str | Path,
    out: str | Path,
    parallel: ParallelConfig,
    force: bool = False,
    on_param: Callable[[str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> Path:
    """Collective over the TP x PP ranks (parallel state initialised for ``parallel``).
    ``on_start(n)`` gets this rank's parameter count, ``on_param`` is called after each."""
    check_output(out, force, hf_dir)
    hf_config, weights = open_hf_source(hf_dir, parallel)
    model = megatron_model(hf_config, parallel, initialize=False, dtype=weights.dtype(EMBEDDING))
    if on_start is not None:
        on_start(sum(1 for _ in model.parameters()))
    load_hf_weights_(
        model,
        weights,
        Qwen3Layout.from_hf_config(hf_config),
        ps.get_tensor_model_parallel_rank(),
        parallel.tensor_parallel,
        get_transformer_layer_offset(model.config),
        on_param=on_param,
    )
    return write_checkpoint(out, model, hf_metadata=hf_dir)
