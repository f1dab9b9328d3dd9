"""Cut a full (TP=1, PP=1) Megatron state dict into one rank's TP/PP shard, from the parameters'
own partition attributes (``partition_dim``, ``partition_stride``), so layouts can be compared
with a single-process model. A stride of 2 is SwiGLU's fused gate/up: each rank holds its slice
of the gate and its slice of the up projection."""

import re

import torch

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def full_name(local_name: str, layer_offset: int) -> str:
    """The TP=1/PP=1 name of this stage's parameter (layer indices are stage-local)."""
    return _LAYER.sub(lambda m: f"decoder.layers.{int(m.group(1)) + layer_offset}.", local_name)


def tp_shard(full: torch.Tensor, param: torch.nn.Parameter, tp_rank: int, tp: int):
    """This TP rank's part of ``full``, split the way ``param`` is partitioned."""
    if not getattr(param, "tensor_model_parallel", False) or tp == 1:
        return full
    dim, stride = param.partition_dim, getattr(param, "partition_stride", 1)
    pieces = torch.split(full, full.shape[dim] // (tp * stride), dim=dim)
    return torch.cat(pieces[tp_rank::tp], dim=dim)


def named_full_shards(model, full: dict, tp_rank: int, tp: int, layer_offset: int):
    """(name, parameter, this rank's shard of the full tensor) for every local parameter."""
    for name, param in model.named_parameters():
        yield name, param, tp_shard(full[full_name(name, layer_offset)], param, tp_rank, tp)


def load_full_state_dict(model, full: dict, tp_rank: int, tp: int, layer_offset: int) -> None:
    with torch.no_grad():
        for name, param, shard in named_full_shards(model, full, tp_rank, tp, layer_offset):
            if shard.shape != param.shape:
                raise ValueError(f"{name}: shard {tuple(shard.shape)} != {tuple(param.shape)}")
            param.copy_(shard)
