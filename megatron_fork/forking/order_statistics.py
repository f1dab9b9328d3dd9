"""Exact k-th largest key over all ranks of a group, without gathering the keys.

Keys are non-negative 32-bit integers held in int64. A radix select over two 16-bit digits finds
the k-th largest key: each round builds a 65536-bin histogram of this rank's candidates, one SUM
all-reduce combines the ranks, and every rank reads the same digit off the same histogram, so
all ranks agree on the answer (and on every later branch) without further talk. Several selection
problems ("rows") share the two all-reduces. Memory is O(rows * 65536), independent of the
number of keys, so a whole optimizer step's tokens can be ranked.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from megatron_fork.parallel.groups import all_reduce_

DIGIT_BITS = 16
NUM_BINS = 1 << DIGIT_BITS
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
    """Per row, the digit holding the k-th largest (k >= 1) and the count strictly above it."""
    from_top = hist.flip(-1).cumsum(-1)  # [rows, NUM_BINS], counts of digits >= NUM_BINS-1-i
    index = torch.searchsorted(from_top, k.unsqueeze(-1)).squeeze(-1).clamp(max=NUM_BINS - 1)
    digit = NUM_BINS - 1 - index
    above = from_top.gather(-1, index.unsqueeze(-1)).squeeze(-1) - hist.gather(
        -1, digit.unsqueeze(-1)
    ).squeeze(-1)
    return digit, above


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
    high = keys >> DIGIT_BITS  # [rows, N]
    hist = _histogram(high, candidates).flatten()
    if extra is not None:
        hist = torch.cat([hist, extra.flatten().to(torch.int64)])
    all_reduce_(hist, group)
    reduced_extra = hist[rows * NUM_BINS :].view_as(extra) if extra is not None else None
    hist = hist[: rows * NUM_BINS].view(rows, NUM_BINS)

    total = hist.sum(-1)  # [rows]
    k = k_of_total(total).to(torch.int64)
    k_eff = k.clamp(min=1)  # rows with k = 0 are masked out at the end
    high_digit, above_high = _pick_digit(hist, k_eff)

    in_bucket = candidates & (high == high_digit.unsqueeze(-1))
    hist_low = _histogram(keys & (NUM_BINS - 1), in_bucket)
    all_reduce_(hist_low, group)
    low_digit, above_low = _pick_digit(hist_low, k_eff - above_high)

    threshold = (high_digit << DIGIT_BITS) | low_digit
    above = above_high + above_low
    tied = hist_low.gather(-1, low_digit.unsqueeze(-1)).squeeze(-1)
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
