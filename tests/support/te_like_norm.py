"""An RMSNorm that carries ``_extra_state`` the way Transformer Engine's does, swapped into a
local-spec GPT, so checkpoints can cross layer specs on CPU.

Megatron's TE spec builds q/k-norm and the final norm as ``TENorm`` -> ``te.pytorch.RMSNorm``, a
TE ops ``BasicOperation``. Its ``get_extra_state`` (transformer_engine/pytorch/ops/op.py, read
from NVIDIA/TransformerEngine) returns a uint8 CPU tensor of pickled quantizer metadata (an
empty one without FP8 state), and ``set_extra_state`` accepts ``None``, an empty tensor or such a
tensor. This norm does the same with JSON bytes in place of the pickle. Being a plain module,
Megatron checkpoints its state dict with ``make_sharded_tensors_for_checkpoint``, which turns
``_extra_state`` into a ``ShardedObject`` as for TE's.
"""

import json

import torch


class TELikeRMSNorm(torch.nn.RMSNorm):
    """torch's RMSNorm (same maths) plus TE-style ``_extra_state``."""

    def __init__(self, hidden_size: int, eps: float, meta: dict):
        super().__init__(hidden_size, eps=eps)
        self.meta = meta
        """What a TE op keeps of its FP8 recipe (``{}``: nothing, an empty tensor is saved)."""

    def get_extra_state(self) -> torch.Tensor:
        if not self.meta:
            return torch.empty(0, dtype=torch.uint8)
        return torch.frombuffer(bytearray(json.dumps(self.meta).encode()), dtype=torch.uint8)

    def set_extra_state(self, state) -> None:
        if state is None or state.numel() == 0:
            return
        self.meta = json.loads(state.numpy().tobytes())


def te_like_norms_(model, meta: dict) -> list[TELikeRMSNorm]:
    """Replace the q/k norms of every layer and the final norm (the norms that are ``TENorm``
    in the TE spec) by ``TELikeRMSNorm`` with the same weights; returns the new norms."""
    swapped = []

    def swap(parent, name):
        old = getattr(parent, name)
        new = TELikeRMSNorm(old.normalized_shape[0], old.eps, dict(meta))
        new.weight.data.copy_(old.weight.data)
        setattr(parent, name, new)
        swapped.append(new)

    for layer in model.decoder.layers:
        swap(layer.self_attention, "q_layernorm")
        swap(layer.self_attention, "k_layernorm")
    swap(model.decoder, "final_layernorm")
    return swapped
