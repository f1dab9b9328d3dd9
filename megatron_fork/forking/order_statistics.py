"""Exact k-th largest key over all ranks of a group, without gathering the keys.

Keys are non-negative 32-bit integers held in int64. A radix select over three digits (11, 11
and 10 bits) finds the k-th largest key: each round builds a 2048-bin histogram of this rank's
candidates that still match the digits chosen so far, one SUM all-reduce combines the ranks, and
every rank reads the same digit off the same histogram, so all ranks agree on the answer (and on
every later branch) without further talk. Several selection problems ("rows") share the three
all-reduces. Memory is O(rows * 2048), independent of the number of keys, so a whole optimizer
step's tokens can be ranked.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from megatron_fork.parallel.groups import all_reduce_

DIGITS = ((21, 11), (10, 11), (0, 10))
"""(shift, bits) of each radix round, most significant first: 32 bits in three all-reduces."""
NUM_BINS = 1 << max(bits for _, bits in DIGITS)
KEY_MAX = (1 << 32) - 1
"""Largest key; keys live in [0, KEY_MAX]."""


@dataclass(frozen=True)
class KthLargest:
    """Per row: the k-th largest candidate key over the group and how the top k split at it."""

    threshold: torch.Tensor
    """[rows] int64 key of the k-th largest candidate (KEY_MAX + 1 when k = 0)."""
    above: torch.Tensor
    """[rows] int64 candidates with key > threshold (all of them are in the top k)."""
    tied: torch.Tensor
    """[rows] int64 candidates with key == threshold."""
    need_from_tied: torch.Tensor
    """[rows] int64 how many of the tied candidates the top k still needs (k - above)."""
    total: torch.Tensor
    """[rows] int64 candidates over the group."""


def float_to_key(values: torch.Tensor) -> torch.Tensor:
    """Order-preserving map of fp32 values to int64 keys in [0, 2**32) (-0.0 maps like +0.0)."""
    values = values.to(torch.float32) + 0.0  # -0.0 + 0.0 == +0.0
    bits = values.view(torch.int32).to(torch.int64) & KEY_MAX
    negative = bits >= (1 << 31)
    return torch.where(negative, KEY_MAX - bits, bits | (1 << 31))


def hash_key(order: torch.Tensor, seed: int) -> torch.Tensor:
    """Pseudo-random int64 keys in [0, 2**32) from (seed, order): a fixed function of both."""

    def mix(x):  # 32-bit integer hash (xor-shift-multiply); low 32 bits survive int64 wrap
        x = x & KEY_MAX
        x = (x ^ (x >> 16)) * 0x7FEB352D & KEY_MAX
        x = (x ^ (x >> 15)) * 0x846CA68B & KEY_MAX
        return x ^ (x >> 16)

    seed_mixed = mix(torch.tensor(seed, dtype=torch.int64))
    return mix(mix(order.to(torch.int64)) ^ seed_mixed)


def _histogram(digits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[rows, NUM_BINS] counts of ``digits`` [rows, N] where ``candidates`` [rows, N]."""
    rows = candidates.shape[0]
    row_offset = torch.arange(rows, device=digits.device).unsqueeze(-1) * NUM_BINS
    flat = (digits + row_offset)[candidates]
    return torch.bincount(flat, minlength=rows * NUM_BINS).view(rows, NUM_BINS)


def _pick_digit(hist: torch.Tensor, k: torch.Tensor):
    """Per row, the digit holding the k-th largest (1 <= k <= total) and the count above it.

    With c the ascending cumulative histogram, the count of digits >= d is total - c[d-1]; the
    answer is the largest d where that is still >= k, i.e. the number of c entries <= total - k.
    """
    cumulative = hist.cumsum(-1)  # [rows, NUM_BINS]
    total = cumulative[:, -1:]  # [rows, 1]
    digit = torch.searchsorted(cumulative, total - k.unsqueeze(-1), right=True)
    digit = digit.clamp(max=NUM_BINS - 1)  # [rows, 1]
    above = total - cumulative.gather(-1, digit)
    return digit.squeeze(-1), above.squeeze(-1)


def kth_largest(
    keys: torch.Tensor,
    candidates: torch.Tensor,
    k_of_total: Callable[[torch.Tensor], torch.Tensor],
    group=None,
    extra: torch.Tensor | None = None,
) -> tuple[KthLargest, torch.Tensor | None]:
    """Radix-select the k-th largest candidate key per row, over all ranks of ``group``.

    Args:
        keys: [N] or [rows, N] int64 in [0, KEY_MAX].
        candidates: [rows, N] bool, which keys take part in each row.
        k_of_total: maps [rows] candidate totals over the group to [rows] k (0 <= k <= total).
        group: process group spanning the ranks whose keys are ranked together (None: local).
        extra: int64 counts to SUM over the group in the first all-reduce (free piggyback).
    Returns:
        (KthLargest, reduced ``extra``).
    """
    keys = keys.expand_as(candidates)
    rows = candidates.shape[0]
    threshold = torch.zeros(rows, dtype=torch.int64, device=keys.device)
    above = torch.zeros_like(threshold)
    in_bucket, reduced_extra, k = candidates, None, None
    for shift, bits in DIGITS:
        digits = (keys >> shift) & ((1 << bits) - 1)  # [rows, N]
        hist = _histogram(digits, in_bucket)  # [rows, NUM_BINS]
        if k is None and extra is not None:  # first round: piggyback the caller's counts
            flat = all_reduce_(torch.cat([hist.flatten(), extra.flatten().to(torch.int64)]), group)
            hist, reduced_extra = flat[: hist.numel()].view_as(hist), flat[hist.numel() :]
            reduced_extra = reduced_extra.view_as(extra)
        else:
            all_reduce_(hist, group)
        if k is None:  # first round: the totals over the group fix k
            total = hist.sum(-1)  # [rows]
            k = k_of_total(total).to(torch.int64)
            k_eff = k.clamp(min=1)  # rows with k = 0 are masked out at the end
        digit, above_digit = _pick_digit(hist, k_eff - above)
        threshold |= digit << shift
        above += above_digit
        in_bucket = in_bucket & (digits == digit.unsqueeze(-1))
    tied = hist.gather(-1, digit.unsqueeze(-1)).squeeze(-1)
    none = k == 0
    result = KthLargest(
        threshold=torch.where(none, KEY_MAX + 1, threshold),
        above=torch.where(none, 0, above),
        tied=torch.where(none, 0, tied),
        need_from_tied=torch.where(none, 0, k - above),
        total=total,
    )
    return result, reduced_extra


def key_to_float(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of ``float_to_key`` for keys in [0, 2**32): fp32 values."""
    keys = keys.to(torch.int64)
    positive = keys >= (1 << 31)
    bits = torch.where(positive, keys & ((1 << 31) - 1), KEY_MAX - keys)
    signed = torch.where(bits >= (1 << 31), bits - (1 << 32), bits)
    return signed.to(torch.int32).view(torch.float32)
