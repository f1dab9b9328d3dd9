"""Rank 0's rollout -> each data-parallel rank's own samples, as a few flat tensors.

Replaces broadcasting every ``Sample`` as pickled Python objects to every rank: rank 0 packs
DP rank ``d``'s samples (the step's ``StepLayout``: which rank trains which samples, in which
mini-batch and micro-batch) into one message — a fixed-size int64 header (sizes) and four flat
tensors — sends it point-to-point from host memory to the first rank of DP index ``d`` (its rank
in rank 0's data-parallel group) over Megatron's gloo DP group, which then broadcasts it on its
device through the groups that span DP index ``d`` (CP, then TP x PP). Every rank of DP index
``d`` ends with exactly slice ``d`` on its device; nothing is pickled.

The DP leg is gloo on purpose: NCCL point-to-point between two ranks builds a dedicated
communicator for that pair, so rank 0 would set up DP - 1 of them (buffers on its GPU) on the
first step; gloo sends from host memory, where the samples are, with no GPU staging on rank 0.
The fan-out broadcasts use the existing NCCL groups (collectives: no new communicators).

Wire format of one message (``HEADER`` fields, then by status):
    ok:    meta int64 [n, 6] (step index, prompt length, response length, trainable,
               mini-batch, micro-batch),
           schedule int64 [mini-batches, 2] (micro-batches per rank, trained),
           tokens int32 [sum(prompt + response)] (each sample's prompt then response),
           floats fp32 [sum(response) + n] (rollout log-probs, then advantages)
    error: text uint8 [message length] (rank 0's exception, raised on every rank)
"""

import itertools
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.distributed as dist

from megatron_fork.parallel.groups import group_rank, group_size
from megatron_fork.rl.step_layout import StepLayout
from megatron_fork.rollout.types import Sample

HEADER = (
    "magic",
    "status",
    "samples",
    "tokens",
    "response_tokens",
    "step_samples",
    "step_max_tokens",
    "mini_batches",
    "error_bytes",
)
"""The int64 header's fields, in order; every message starts with these."""
MAGIC = 0x524F4C4C  # "ROLL": a receiver that reads anything else is out of step
OK, ERROR = 0, 1
META_COLUMNS = 6  # step index, prompt length, response length, trainable, mini, micro
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class ScatterGroups:
    """The process groups a scatter runs over (None = this process alone)."""

    dp: object = None
    """Data-parallel group (without CP) that sends host tensors (gloo). Rank 0's holds the first
    rank of every DP index, in DP order: those receive from rank 0."""
    fan_out: tuple = ()
    """Groups that together span the ranks of one DP index, broadcast through in order from
    their rank 0: (CP, TP x PP) under Megatron. A rank joins group ``k``'s broadcast once it
    is rank 0 of every later group."""

    @classmethod
    def from_parallel_state(cls) -> "ScatterGroups":
        from megatron.core import parallel_state as ps

        cp, model_parallel = ps.get_context_parallel_group(), ps.get_model_parallel_group()
        return cls(dp=ps.get_data_parallel_group_gloo(), fan_out=(cp, model_parallel))


@dataclass(frozen=True)
class RolloutToScatter:
    """Rank 0's input: one step's samples and which DP rank trains which."""

    samples: list[Sample]
    advantages: torch.Tensor
    """[len(samples)] one advantage per sample."""
    trainable: list[bool]
    """Per sample: False for a filler row (no valid tokens)."""
    layout: StepLayout
    """Which DP rank trains which samples, in which micro-batches (each sample at most once)."""


@dataclass(frozen=True)
class RolloutSlice:
    """One DP rank's samples (n of them), on its device."""

    sample_indices: torch.Tensor
    """[n] int64: each sample's index in the step (for the canonical token order)."""
    prompt_lengths: torch.Tensor
    """[n] int64."""
    response_lengths: torch.Tensor
    """[n] int64."""
    token_ids: torch.Tensor
    """[sum(prompt + response)] int64: sample i's prompt then response at
    ``token_offsets[i]:token_offsets[i + 1]``."""
    rollout_logprobs: torch.Tensor
    """[sum(response)] fp32: the engine's log-probs of the response tokens, in sample order."""
    advantages: torch.Tensor
    """[n] fp32."""
    trainable: torch.Tensor
    """[n] bool."""
    step_samples: int
    """Samples in the whole step (every DP rank)."""
    step_max_tokens: int
    """Longest prompt + response in the whole step: every rank pads rows alike."""
    mini_batch: torch.Tensor
    """[n] int64: each sample's mini-batch."""
    micro_batch: torch.Tensor
    """[n] int64: each sample's micro-batch within its mini-batch."""
    microbatch_counts: list[int]
    """Micro-batches this rank runs in each mini-batch (the same on every DP rank)."""
    trained: list[bool]
    """Per mini-batch: whether it takes an optimizer step (``StepLayout.trained``)."""

    def microbatch_members(self) -> list[list[list[int]]]:
        """[m][j]: positions in this slice of micro-batch ``j`` of mini-batch ``m``'s samples,
        in order (possibly empty)."""
        members = [[[] for _ in range(count)] for count in self.microbatch_counts]
        placement = zip(self.mini_batch.tolist(), self.micro_batch.tolist(), strict=True)
        for k, (m, j) in enumerate(placement):
            members[m][j].append(k)
        return members

    @cached_property
    def token_offsets(self) -> torch.Tensor:
        """[n + 1] int64: where each sample's tokens start in ``token_ids``."""
        lengths = self.prompt_lengths + self.response_lengths  # [n]
        return torch.nn.functional.pad(lengths.cumsum(0), (1, 0))

    @cached_property
    def logprob_offsets(self) -> torch.Tensor:
        """[n + 1] int64: where each sample's log-probs start in ``rollout_logprobs``."""
        return torch.nn.functional.pad(self.response_lengths.cumsum(0), (1, 0))


def _check(data: RolloutToScatter, dp_size: int) -> None:
    n = len(data.samples)
    if not n == len(data.advantages) == len(data.trainable):
        raise ValueError(
            f"{n} samples, {len(data.advantages)} advantages and {len(data.trainable)} "
            "trainable flags must match"
        )
    if data.layout.dp_size != dp_size:
        raise ValueError(f"the layout has {data.layout.dp_size} DP ranks for DP size {dp_size}")
    used = sorted(itertools.chain(*(data.layout.assignment(d) for d in range(dp_size))))
    if len(set(used)) != len(used) or (used and not 0 <= used[0] <= used[-1] < n):
        raise ValueError(f"the layout must use each of the {n} samples at most once")
    for s in data.samples:
        if len(s.output_logprobs) != len(s.output_ids):
            raise ValueError(
                f"sample {s.request_id!r}: {len(s.output_logprobs)} log-probs for "
                f"{len(s.output_ids)} generated tokens"
            )


def _pack(data: RolloutToScatter, d: int, step_max: int) -> list[torch.Tensor]:
    """DP rank ``d``'s message (CPU): header, meta, schedule, tokens, floats."""
    indices, placement = data.layout.assignment(d), data.layout.placement(d)
    chosen = [data.samples[i] for i in indices]
    ids = _concatenated([t for s in chosen for t in (s.prompt_ids, s.output_ids)], torch.int64)
    if ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) <= INT32_MAX:
        raise ValueError(f"token ids must lie in [0, {INT32_MAX}] to travel as int32")
    logprobs = _concatenated([s.output_logprobs for s in chosen], torch.float32)
    meta = torch.tensor(
        [
            [i, len(s.prompt_ids), len(s.output_ids), bool(data.trainable[i]), m, j]
            for i, s, (m, j) in zip(indices, chosen, placement, strict=True)
        ],
        dtype=torch.int64,
    ).reshape(len(chosen), META_COLUMNS)
    schedule = torch.tensor(
        list(zip(data.layout.microbatch_counts(), data.layout.trained, strict=True)),
        dtype=torch.int64,
    ).reshape(-1, 2)
    advantages = data.advantages.reshape(-1)[indices].to(torch.float32)  # [n]
    floats = torch.cat([logprobs, advantages])
    sizes = (len(chosen), len(ids), len(logprobs), len(data.samples), step_max, len(schedule), 0)
    header = torch.tensor((MAGIC, OK, *sizes), dtype=torch.int64)
    return [header, meta, schedule, ids.to(torch.int32), floats]


def _concatenated(sequences, dtype) -> torch.Tensor:
    """One flat tensor of Python sequences: a tensor per sequence, then one cat (about 6x
    faster than chaining them into one list first: ~4 s instead of ~27 s of rank 0's time for
    the 8B recipe's 67M ids per step, measured at 1/16 of that)."""
    parts = [torch.tensor(seq, dtype=dtype) for seq in sequences if len(seq)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)


def _pack_error(error: Exception) -> list[torch.Tensor]:
    text = torch.tensor(list(f"{type(error).__name__}: {error}".encode()), dtype=torch.uint8)
    header = torch.tensor((MAGIC, ERROR, 0, 0, 0, 0, 0, 0, len(text)), dtype=torch.int64)
    return [header, text]


def _pack_all(work, dp_size: int) -> tuple[list[list[torch.Tensor]], Exception | None]:
    """Rank 0: every DP rank's message, or one error message for all of them. Everything is
    packed before anything is sent, so a failure cannot leave some ranks served."""
    try:
        data = work()
        _check(data, dp_size)
        step_max = max((len(s.prompt_ids) + len(s.output_ids) for s in data.samples), default=0)
        return [_pack(data, d, step_max) for d in range(dp_size)], None
    except Exception as caught:  # re-raised on every rank by _unpack
        return [_pack_error(caught)] * dp_size, caught


def _payload_like(header: torch.Tensor) -> list[torch.Tensor]:
    """Empty receive buffers for the tensors that follow ``header`` (on its device)."""
    magic, status, n, tokens, responses, _, _, mini_batches, error_bytes = header.tolist()
    if magic != MAGIC:
        raise RuntimeError(f"rollout scatter out of step: header magic {magic:#x}")
    device = header.device
    if status == ERROR:
        return [torch.empty(error_bytes, dtype=torch.uint8, device=device)]
    return [
        torch.empty(n, META_COLUMNS, dtype=torch.int64, device=device),
        torch.empty(mini_batches, 2, dtype=torch.int64, device=device),
        torch.empty(tokens, dtype=torch.int32, device=device),
        torch.empty(responses + n, dtype=torch.float32, device=device),
    ]


def _receive(group) -> list[torch.Tensor]:
    """A message (host tensors) from ``group``'s rank 0 (rank 0's DP group: global rank 0)."""
    header = torch.empty(len(HEADER), dtype=torch.int64)
    dist.recv(header, group=group, group_src=0)
    payload = _payload_like(header)
    for tensor in payload:
        dist.recv(tensor, group=group, group_src=0)
    return [header, *payload]


def _send_all(messages: list[list[torch.Tensor]], group) -> list[torch.Tensor]:
    """Rank 0: message ``d`` (host tensors) to DP rank ``d``; returns its own (``d`` = 0)."""
    for d in range(1, len(messages)):
        for tensor in messages[d]:
            dist.send(tensor, group=group, group_dst=d)
        messages[d] = None  # sent: free it
    return messages[0]


def _broadcast(message: list[torch.Tensor] | None, group, device) -> list[torch.Tensor]:
    """``group``'s rank 0's message on every rank of ``group``."""
    if group_size(group) == 1:
        return message
    header = (
        message[0] if message is not None else torch.empty(len(HEADER), dtype=torch.int64)
    ).to(device)
    dist.broadcast(header, group=group, group_src=0)
    payload = message[1:] if message is not None else _payload_like(header)
    for tensor in payload:
        dist.broadcast(tensor, group=group, group_src=0)
    return [header, *payload]


def _unpack(message: list[torch.Tensor], error: Exception | None) -> RolloutSlice:
    header = message[0].tolist()
    if header[1] == ERROR:
        if error is not None:
            raise error
        raise RuntimeError(f"rank 0 failed: {bytes(message[1].tolist()).decode()}")
    meta, schedule, tokens, floats = message[1:]
    n, responses = header[2], header[4]
    return RolloutSlice(
        sample_indices=meta[:, 0],
        prompt_lengths=meta[:, 1],
        response_lengths=meta[:, 2],
        token_ids=tokens.long(),
        rollout_logprobs=floats[:responses],
        advantages=floats[responses : responses + n],
        trainable=meta[:, 3].bool(),
        step_samples=header[5],
        step_max_tokens=header[6],
        mini_batch=meta[:, 4],
        micro_batch=meta[:, 5],
        microbatch_counts=schedule[:, 0].tolist(),
        trained=schedule[:, 1].bool().tolist(),
    )


def scatter_rollout(work, groups: ScatterGroups, device) -> RolloutSlice:
    """``work()`` on global rank 0 (a ``RolloutToScatter``); on every rank, the slice of its DP
    index, on ``device`` (the device the fan-out groups communicate on: CPU for gloo, the GPU
    for NCCL; ``groups.dp`` sends host tensors). Collective over every rank. An
    error there (in ``work`` or a malformed input) is raised on every rank: the original on
    rank 0, a RuntimeError naming it on the others, as ``rank0.from_rank0``."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    messages, error = _pack_all(work, group_size(groups.dp)) if rank == 0 else (None, None)
    later_roots = [
        all(group_rank(g) == 0 for g in groups.fan_out[k + 1 :]) for k in range(len(groups.fan_out))
    ]  # joins broadcast k: rank 0 of every later group (the root of group k's tree)
    message = None
    if all(group_rank(g) == 0 for g in groups.fan_out):  # first rank of a DP index
        message = _send_all(messages, groups.dp) if rank == 0 else _receive(groups.dp)
        message = [tensor.to(device) for tensor in message]
    for group, joins in zip(groups.fan_out, later_roots, strict=True):
        if joins:
            message = _broadcast(message, group, device)
    return _unpack(message, error)
