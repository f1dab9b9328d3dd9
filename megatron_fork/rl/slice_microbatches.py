"""A DP rank's rollout slice -> its micro-batches: packed sequences (THD) or padded rows.

Sample ``k`` of prompt ``P`` and response ``R`` tokens occupies ``n = P + R - 1`` next-token
positions: inputs ``ids[:-1]``, targets ``ids[1:]``; the response's targets (positions
``P - 1 .. n - 1``) are valid when the sample is trainable, with the engine's log-probs and the
sample's advantage. Packed, a micro-batch is its samples back to back ([1, t]), each in a slot
padded as ``packing.pack_microbatch`` pads it, position ids restarting in every slot; padded,
it is rows of the step's common length ([b, s]). Either way a token's canonical order is
``step index * stride + position`` (``stride``: the padded row length), so both layouts rank
ties and draw the random strategy identically.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_fork.rl.rollout_scatter import RolloutSlice
from megatron_fork.trainer.packing import PackingLayout, pack_microbatch
from megatron_fork.trainer.policy_batch import PolicyMicroBatch


@dataclass(frozen=True)
class _SampleTensors:
    """One sample's next-token tensors, [n] each."""

    tokens: torch.Tensor
    target: torch.Tensor
    valid_mask: torch.Tensor
    old_logprob: torch.Tensor
    advantages: torch.Tensor
    step_index: int

    def padded_to(self, length: int, pad_id: int, stride: int) -> dict[str, torch.Tensor]:
        """Every per-token field right-padded to ``length`` (pad ids, invalid, zeros), with
        positions and canonical order over the whole ``length``."""
        extra = length - self.tokens.numel()
        positions = torch.arange(length)
        return {
            "tokens": F.pad(self.tokens, (0, extra), value=pad_id),
            "target": F.pad(self.target, (0, extra), value=pad_id),
            "valid_mask": F.pad(self.valid_mask, (0, extra), value=False),
            "old_logprob": F.pad(self.old_logprob, (0, extra)),
            "advantages": F.pad(self.advantages, (0, extra)),
            "position_ids": positions,
            "token_order": self.step_index * stride + positions,
        }


def sample_positions(rollout: RolloutSlice) -> list[int]:
    """Next-token positions of each sample in the slice (prompt + response - 1)."""
    return (rollout.prompt_lengths + rollout.response_lengths - 1).tolist()


def _sample(rollout: RolloutSlice, k: int) -> _SampleTensors:
    prompt, response = int(rollout.prompt_lengths[k]), int(rollout.response_lengths[k])
    step_index = int(rollout.sample_indices[k])
    if prompt < 1:
        raise ValueError(
            f"step sample {step_index} has no prompt token: nothing predicts its first"
        )
    start = int(rollout.token_offsets[k])
    ids = rollout.token_ids[start : start + prompt + response].cpu()
    n = prompt + response - 1
    valid = torch.zeros(n, dtype=torch.bool)
    valid[prompt - 1 :] = bool(rollout.trainable[k])
    logprob = torch.zeros(n)
    first = int(rollout.logprob_offsets[k])
    logprob[prompt - 1 :] = rollout.rollout_logprobs[first : first + response].cpu()
    advantage = float(rollout.advantages[k])
    return _SampleTensors(
        ids[:-1], ids[1:], valid, logprob, torch.where(valid, advantage, 0.0), step_index
    )


def _stacked(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: torch.stack([row[name] for row in rows]) for name in rows[0]}


def padded_microbatch(
    rollout: RolloutSlice, members: list[int], seq_len: int, pad_id: int
) -> PolicyMicroBatch:
    """Samples ``members`` (positions in the slice) as rows of ``seq_len`` ([b, seq_len])."""
    rows = []
    for k in members:
        sample = _sample(rollout, k)
        if sample.tokens.numel() > seq_len:
            raise ValueError(
                f"step sample {sample.step_index} has {sample.tokens.numel()} positions, more "
                f"than the row length {seq_len}"
            )
        rows.append(sample.padded_to(seq_len, pad_id, seq_len))
    return PolicyMicroBatch(**_stacked(rows))


def packed_microbatch(
    rollout: RolloutSlice, members: list[int], layout: PackingLayout, stride: int, pad_id: int
) -> PolicyMicroBatch:
    """Samples ``members`` (positions in the slice) packed into one [1, t] sequence, slots as
    ``pack_microbatch`` pads them; no member: one slot of padding (``total_multiple`` long),
    no valid token, 0 samples."""
    samples = [_sample(rollout, k) for k in members]
    if samples:
        lengths = [s.tokens.numel() for s in samples]
        slots = pack_microbatch(range(len(samples)), lengths, layout).padded_lengths
    else:
        empty = torch.zeros(0, dtype=torch.long)
        samples = [_SampleTensors(empty, empty, empty.bool(), empty.float(), empty.float(), 0)]
        slots = (layout.total_multiple,)
    pieces = [s.padded_to(n, pad_id, stride) for s, n in zip(samples, slots, strict=True)]
    packed = {name: torch.cat([p[name] for p in pieces])[None] for name in pieces[0]}  # [1, t]
    boundaries = F.pad(torch.tensor(slots, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
    # With CP, TE needs the padded boundaries too: all four fields get the slots (packing.py's
    # docstring). Without, they stay None: TE then takes cu_seqlens for them and skips comparing
    # the two on the GPU (a host sync per layer: dot_product_attention.py, TE 2.11).
    padded = boundaries if layout.sample_multiple > 1 else None
    params = PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=boundaries,
        cu_seqlens_kv=boundaries,
        cu_seqlens_q_padded=padded,
        cu_seqlens_kv_padded=padded,
        max_seqlen_q=max(slots),
        max_seqlen_kv=max(slots),
    )
    return PolicyMicroBatch(**packed, packed_seq_params=params, num_samples=len(members))
