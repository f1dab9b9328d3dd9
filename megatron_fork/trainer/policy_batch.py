"""One micro-batch of policy-gradient training data, and its context-parallel shard."""

from dataclasses import dataclass, fields, replace

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.utils import get_batch_on_this_cp_rank

from megatron_fork.parallel.groups import group_rank, group_size
from megatron_fork.trainer.packing import cp_token_indices

_FIELD_KINDS = {
    "tokens": "integer",
    "position_ids": "integer",
    "target": "integer",
    "token_order": "integer",
    "valid_mask": "bool",
    "selected": "bool",
}
_KIND_CHECKS = {
    "integer": lambda t: not t.is_floating_point() and t.dtype != torch.bool,
    "bool": lambda t: t.dtype == torch.bool,
    "float": lambda t: t.is_floating_point(),
}


@dataclass(frozen=True)
class PolicyMicroBatch:
    """[b, s] tensors of one micro-batch (whole sequences, or this CP rank's shard of them).

    ``target[:, t]`` is the token predicted at position t (``tokens`` shifted left); masks and
    per-token values are aligned with ``target``.
    """

    tokens: torch.Tensor
    """[b, s] int64 input ids."""
    position_ids: torch.Tensor
    """[b, s] int64."""
    target: torch.Tensor
    """[b, s] int64 next-token ids."""
    valid_mask: torch.Tensor
    """[b, s] bool, True where ``target`` is a response token."""
    old_logprob: torch.Tensor
    """[b, s] fp32 log-probs of ``target`` under the policy that sampled it."""
    advantages: torch.Tensor
    """[b, s] fp32 per-token advantages."""
    token_order: torch.Tensor
    """[b, s] int64 canonical index of each token in the optimizer step (unique, < 2**32): ties
    and the random strategy use it, so every parallel layout selects the same tokens."""
    selected: torch.Tensor | None = None
    """[b, s] bool precomputed selection (scope ``global_step``); None = select in the loss."""
    ref_logprob: torch.Tensor | None = None
    """[b, s] fp32 reference-policy log-probs (KL term), or None."""
    packed_seq_params: PackedSeqParams | None = None
    """A packed micro-batch (b = 1, its samples back to back): Megatron's THD boundaries, the
    padded sample slots in every ``cu_seqlens`` field (``packing`` module docstring), for the
    whole sequence (CP shards keep the full boundaries, as TE expects). None: one sample a
    row."""
    num_samples: int | None = None
    """Samples in a packed micro-batch (its rows for ``microbatch_selected_mean``; 0 for a
    micro-batch of padding only). None: rows."""

    def __post_init__(self):
        shape = self.tokens.shape
        if len(shape) != 2:
            raise ValueError(f"PolicyMicroBatch.tokens must be [b, s], got {tuple(shape)}.")
        if (self.packed_seq_params is None) != (self.num_samples is None):
            raise ValueError("a packed PolicyMicroBatch needs packed_seq_params and num_samples")
        if self.packed_seq_params is not None and shape[0] != 1:
            raise ValueError(f"a packed PolicyMicroBatch is [1, t], got {tuple(shape)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, torch.Tensor):
                continue
            if value.shape != shape:
                raise ValueError(
                    f"PolicyMicroBatch.{f.name} is {tuple(value.shape)} but tokens are "
                    f"{tuple(shape)}: every per-token field must be [b, s]."
                )
            kind = _FIELD_KINDS.get(f.name, "float")
            if not _KIND_CHECKS[kind](value):
                raise TypeError(f"PolicyMicroBatch.{f.name} must be {kind}, got {value.dtype}.")

    def tensors(self) -> dict[str, torch.Tensor]:
        """The per-token [b, s] fields that are set."""
        present = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in present.items() if isinstance(v, torch.Tensor)}

    def context_parallel_shard(self, cp_group) -> "PolicyMicroBatch":
        """This CP rank's part: 2*CP chunks of each sequence, rank r keeps chunks r and
        2*CP-1-r (the load-balanced split): of the row (Megatron's own function), or of each
        packed sample's slot (TE's THD order, ``packing.cp_token_indices``). No group:
        unchanged."""
        if cp_group is None or group_size(cp_group) == 1:
            return self
        if self.packed_seq_params is None:
            return replace(self, **get_batch_on_this_cp_rank(self.tensors(), cp_group=cp_group))
        slots = self.packed_seq_params.cu_seqlens_q_padded.cpu()  # set under CP
        keep = cp_token_indices(
            (slots[1:] - slots[:-1]).tolist(), group_size(cp_group), group_rank(cp_group)
        ).to(self.tokens.device)
        return replace(self, **{k: v[:, keep] for k, v in self.tensors().items()})


def context_parallel_slice(tensor: torch.Tensor, cp_group) -> torch.Tensor:
    """This CP rank's part of one [b, s, ...] tensor, split like ``context_parallel_shard``."""
    if cp_group is None:
        return tensor
    return get_batch_on_this_cp_rank({"tensor": tensor}, cp_group=cp_group)["tensor"]


def canonical_token_order(sample_index: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[b, s] int64: sample_index[b] * seq_len + position, a layout-free index of each token."""
    positions = torch.arange(seq_len, device=sample_index.device)
    return sample_index.to(torch.int64).unsqueeze(-1) * seq_len + positions  # [b, s]


def next_token_row(prompt_ids, completion_ids, seq_len: int, pad_id: int, name: str):
    """One right-padded row for next-token training: ([seq_len + 1] ids, [seq_len] bool mask of
    the positions whose target is a completion token, i.e. positions P - 1 .. P + C - 2).
    Inputs are ids[:-1], targets ids[1:]. ``name`` identifies the row in the error."""
    ids = list(prompt_ids) + list(completion_ids)
    if len(ids) > seq_len + 1:
        raise ValueError(
            f"{name} has {len(ids)} tokens, more than seq_len + 1 = {seq_len + 1}: raise "
            "seq_len to the longest prompt + completion."
        )
    tokens = torch.full((seq_len + 1,), pad_id, dtype=torch.long)
    tokens[: len(ids)] = torch.tensor(ids, dtype=torch.long)
    mask = torch.zeros(seq_len, dtype=torch.bool)
    mask[max(len(prompt_ids) - 1, 0) : len(ids) - 1] = True  # no prompt: the first id is input only
    return tokens, mask


def moved_to(batch, device: torch.device):
    """A copy of a dataclass (a micro-batch, a rollout slice) with every tensor field on
    ``device`` (batches are built on the CPU; the model may live on a GPU)."""
    moved = {
        f.name: getattr(batch, f.name).to(device)
        for f in fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)
    }
    packed = getattr(batch, "packed_seq_params", None)
    if packed is not None:  # TE's kernels read the boundaries on the GPU: one copy, shared
        copies = {}
        moved["packed_seq_params"] = replace(
            packed,
            **{
                f.name: copies.setdefault(id(value), value.to(device))
                for f in fields(packed)
                if isinstance(value := getattr(packed, f.name), torch.Tensor)
            },
        )
    return replace(batch, **moved)
