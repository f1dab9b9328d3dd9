"""Cut a full (TP=1, PP=1) Megatron state dict into one rank's TP/PP shard, so layouts can be
compared with a single-process model (the sharding itself is the library's)."""

import re

import torch

from megatron_fork.models.tp_sharding import shard_for_rank

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def full_name(local_name: str, layer_offset: int) -> str:
    """The TP=1/PP=1 name of this stage's parameter (layer indices are stage-local)."""
    return _LAYER.sub(lambda m: f"decoder.layers.{int(m.group(1)) + layer_offset}.", local_name)


def named_full_shards(model, full: dict, tp_rank: int, tp: int, layer_offset: int):
    """(name, parameter, this rank's shard of the full tensor) for every local parameter."""
    for name, param in model.named_parameters():
        yield name, param, shard_for_rank(full[full_name(name, layer_offset)], param, tp_rank, tp)


def load_full_state_dict(model, full: dict, tp_rank: int, tp: int, layer_offset: int) -> None:
    with torch.no_grad():
        for name, param, shard in named_full_shards(model, full, tp_rank, tp, layer_offset):
            if shard.shape != param.shape:
                raise ValueError(f"{name}: shard {tuple(shard.shape)} != {tuple(param.shape)}")
            param.copy_(shard)
