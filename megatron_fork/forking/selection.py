"""Which response tokens carry the policy gradient: exactly k = ceil(rho * N_valid) per scope.

Tokens are ranked by a key (entropy for top/bottom, a seeded hash for random) with ties broken
by a canonical token ``order`` that does not depend on the parallel layout (callers under CP or
across micro-batches pass one), so every layout selects the same set as a single process.
The ranking is one total order: top(rho) takes its head and bottom takes its tail, so top(rho)
and bottom(1 - rho) are complementary. Selection over a group is exact (radix select over all
ranks, see ``order_statistics``); padding and prompt tokens (``valid_mask`` False) are never
selected.
"""

import math
from collections.abc import Callable
from fractions import Fraction

import torch

from megatron_fork.forking.config import STRATEGIES, check_rho
from megatron_fork.forking.order_statistics import (
    KEY_MAX,
    float_to_key,
    hash_key,
    kth_largest,
)
from megatron_fork.parallel.groups import all_gather_counts, group_rank


def num_to_select(rho: float, num_valid: torch.Tensor) -> torch.Tensor:
    """k = ceil(rho * n), exact for rho as written in decimal (0.1 * 30 gives 3, not 4).

    ``rho`` is read as the decimal its repr shows (``Fraction(repr(rho))``), so float error in
    rho * n never moves k, and any positive rho selects at least one of n > 0 tokens.
    """
    exact_rho = Fraction(repr(float(rho)))
    counts = num_valid.to(torch.int64)
    k = [math.ceil(exact_rho * n) for n in counts.flatten().tolist()]
    return torch.tensor(k, dtype=torch.int64, device=counts.device).view(counts.shape)


def default_order(like: torch.Tensor, group) -> torch.Tensor:
    """Rank-major flat index of each token over the group: [*like.shape] int64, unique."""
    counts = all_gather_counts(like.numel(), group, like.device)
    offset = int(counts[: group_rank(group)].sum())
    return (torch.arange(like.numel(), device=like.device) + offset).view(like.shape)


def _raise_for_problems(problems: torch.Tensor) -> None:
    nonfinite, bad_order = (int(n) for n in problems)
    if nonfinite:
        raise FloatingPointError(
            f"{nonfinite} valid tokens have a non-finite entropy; check the logits "
            "(NaN/inf from the model) before selecting tokens."
        )
    if bad_order:
        raise ValueError(f"{bad_order} token order values lie outside [0, 2**32).")


def _take_top_k(key, valid, k_of_total, tie_key, group, problems):
    """Exactly k valid tokens with the largest ``key``; ties by largest ``tie_key()``.
    ``problems`` ([nonfinite entropies, bad orders]) ride on the first all-reduce."""
    top, reduced_problems = kth_largest(
        key.flatten(), valid.flatten()[None], k_of_total, group, problems
    )
    _raise_for_problems(reduced_problems)  # the same counts on every rank: all raise together
    threshold, need, tied = int(top.threshold[0]), int(top.need_from_tied[0]), int(top.tied[0])
    mask = valid & (key > threshold)
    at_threshold = valid & (key == threshold)
    if need == tied:  # every rank reads the same reduced counts, so all take the same branch
        mask |= at_threshold
    elif need > 0:
        ties = tie_key()
        tie_pick, _ = kth_largest(
            ties.flatten(), at_threshold.flatten()[None], lambda _: top.need_from_tied, group
        )
        if int(tie_pick.tied[0]) != int(tie_pick.need_from_tied[0]):  # same on every rank
            raise ValueError(
                "token order is not unique over the scope: tied tokens share an order value. "
                "Pass a canonical index (e.g. canonical_token_order) unique across the group."
            )
        mask |= at_threshold & (ties >= tie_pick.threshold[0])
    return mask


def _key_top(entropy, order_fn, seed):
    return float_to_key(entropy), lambda: KEY_MAX - order_fn()


def _key_bottom(entropy, order_fn, seed):
    return KEY_MAX - float_to_key(entropy), order_fn


def _key_random(entropy, order_fn, seed):
    order = order_fn()
    return hash_key(order, seed), lambda: KEY_MAX - order


_RANKING_KEYS: dict[str, Callable] = {"top": _key_top, "bottom": _key_bottom, "random": _key_random}


def check_selection_inputs(entropy, valid_mask, order=None) -> None:
    if entropy.shape != valid_mask.shape:
        raise ValueError(
            f"entropy {tuple(entropy.shape)} and valid_mask {tuple(valid_mask.shape)} differ."
        )
    if valid_mask.dtype != torch.bool:
        raise TypeError(f"valid_mask must be bool, got {valid_mask.dtype}.")
    if entropy.device != valid_mask.device:
        raise ValueError(f"entropy on {entropy.device} but valid_mask on {valid_mask.device}.")
    if order is not None and (order.shape != entropy.shape or order.device != entropy.device):
        raise ValueError(
            f"order {tuple(order.shape)} on {order.device} must match entropy "
            f"{tuple(entropy.shape)} on {entropy.device}."
        )


def select_forking_tokens(
    entropy: torch.Tensor,
    valid_mask: torch.Tensor,
    rho: float,
    strategy: str = "top",
    group=None,
    seed: int = 0,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool mask of the tokens that carry the gradient, exactly k over the ranks of ``group``.

    Args:
        entropy: [...] per-token entropy (any float dtype; ranked in fp32).
        valid_mask: [...] bool, True for response tokens (never padding or prompt).
        rho: fraction selected, k = ceil(rho * N_valid) with N_valid over the group; ignored by
            ``all``.
        strategy: ``top`` | ``bottom`` | ``random`` | ``all``.
        group: process group spanning the scope; None = this process only.
        seed: seed of ``random``.
        order: [...] int64 canonical index of each token in the scope, unique and < 2**32, used
            for ties and by ``random``; default: rank-major flat index over the group.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}.")
    if strategy != "all":
        check_rho(rho)
    check_selection_inputs(entropy, valid_mask, order)
    entropy = entropy.detach().to(torch.float32)
    # Data problems are counted into the first all-reduce, so every rank raises together.
    problems = torch.stack(
        [
            (valid_mask & ~torch.isfinite(entropy)).sum(),
            ((order < 0) | (order > KEY_MAX)).sum() if order is not None else valid_mask.sum() * 0,
        ]
    )
    if strategy == "all":
        k_of_total = lambda total: total
        key, tie_key = torch.zeros_like(entropy, dtype=torch.int64), lambda: None
    else:
        order_fn = (lambda: order) if order is not None else lambda: default_order(entropy, group)
        k_of_total = lambda total: num_to_select(rho, total)
        key, tie_key = _RANKING_KEYS[strategy](entropy, order_fn, seed)
    # One key for "all" makes every valid token tie and need == tied: all are taken.
    return _take_top_k(key, valid_mask, k_of_total, tie_key, group, problems)
