"""select_forking_tokens (one process) against a reference that sorts the tokens.

Reference ranking: one total order on the valid tokens, by (-entropy, order) with a stable sort;
top(rho) takes the first k, bottom(rho) the last k, k = ceil(rho * n_valid) computed exactly.
"""

from fractions import Fraction

import pytest
import torch

from megatron_fork.forking import select_forking_tokens
from tests.support.reference import exact_k, select_by_sort


def reference_select(entropy, valid, rho, strategy="top", order=None):
    """Bool mask, same shape as entropy, by sorting valid tokens on (-entropy, order)."""
    return select_by_sort(entropy, valid, order, rho, strategy)


def _random_case(shape, seed, levels=None, valid_prob=0.7):
    gen = torch.Generator().manual_seed(seed)
    if levels is None:
        entropy = torch.rand(shape, generator=gen) * 3
    else:
        entropy = torch.randint(0, levels, shape, generator=gen).to(torch.float32) * 0.25
    valid = torch.rand(shape, generator=gen) < valid_prob
    return entropy, valid


# ---- counts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["top", "bottom", "random"])
@pytest.mark.parametrize(
    ("rho", "n", "k"),
    [
        (0.1, 30, 3),
        (0.2, 10, 2),
        (0.2, 11, 3),
        (0.3, 10, 3),
        (0.7, 10, 7),
        (1.0, 9, 9),
        (0.01, 5, 1),
    ],
)
def test_selects_exactly_ceil_rho_n(strategy, rho, n, k):
    entropy = torch.rand(n, generator=torch.Generator().manual_seed(n))
    valid = torch.ones(n, dtype=torch.bool)
    assert int(select_forking_tokens(entropy, valid, rho, strategy=strategy).sum()) == k


def test_count_uses_valid_tokens_only():
    entropy = torch.rand(40, generator=torch.Generator().manual_seed(0))
    valid = torch.zeros(40, dtype=torch.bool)
    valid[::4] = True  # 10 valid
    mask = select_forking_tokens(entropy, valid, 0.25)
    assert int(mask.sum()) == 3  # ceil(2.5)


def test_tiny_positive_rho_selects_at_least_one_token():
    """rho > 0 and k = ceil(rho * n): 5 valid tokens at rho = 1e-7 give k = ceil(5e-7) = 1."""
    entropy = torch.tensor([0.1, 0.5, 0.3, 0.2, 0.4])
    valid = torch.ones(5, dtype=torch.bool)
    mask = select_forking_tokens(entropy, valid, 1e-7)
    assert mask.tolist() == [False, True, False, False, False]


# ---- which tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["top", "bottom"])
@pytest.mark.parametrize("rho", [0.1, 0.25, 0.9])
@pytest.mark.parametrize("levels", [None, 3])
def test_matches_sorting_reference(strategy, rho, levels):
    entropy, valid = _random_case((4, 13), seed=int(rho * 100) + (levels or 0), levels=levels)
    mask = select_forking_tokens(entropy, valid, rho, strategy=strategy)
    assert torch.equal(mask, reference_select(entropy, valid, rho, strategy))


@pytest.mark.parametrize("strategy", ["top", "bottom"])
def test_matches_sorting_reference_with_given_order(strategy):
    entropy, valid = _random_case((50,), seed=3, levels=4)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(1)) * 7 + 1000
    mask = select_forking_tokens(entropy, valid, 0.3, strategy=strategy, order=order)
    assert torch.equal(mask, reference_select(entropy, valid, 0.3, strategy, order))


def test_top_picks_highest_entropy_hand_example():
    entropy = torch.tensor([0.5, 2.0, 0.1, 3.0, 1.0, 9.0])
    valid = torch.tensor([True, True, True, True, True, False])  # 9.0 is padding
    mask = select_forking_tokens(entropy, valid, 0.4)  # k = ceil(2.0) = 2
    assert mask.tolist() == [False, True, False, True, False, False]


def test_bottom_picks_lowest_entropy_hand_example():
    entropy = torch.tensor([0.5, 2.0, 0.1, 3.0, 1.0, -9.0])
    valid = torch.tensor([True, True, True, True, True, False])
    mask = select_forking_tokens(entropy, valid, 0.4, strategy="bottom")
    assert mask.tolist() == [True, False, True, False, False, False]


def test_negative_and_signed_zero_entropies_are_ranked_numerically():
    entropy = torch.tensor([-1.0, -0.0, 0.0, -3.5, 2.0, -0.5])
    valid = torch.ones(6, dtype=torch.bool)
    # Ranking (-entropy, index): 4 (2.0), 1 (-0.0), 2 (0.0), 5, 0, 3.
    top = select_forking_tokens(entropy, valid, 0.5)
    assert top.tolist() == [False, True, True, False, True, False]
    bottom = select_forking_tokens(entropy, valid, 0.5, strategy="bottom")
    assert bottom.tolist() == [True, False, False, True, False, True]


def test_padding_is_never_selected_even_with_highest_entropy():
    entropy = torch.arange(20, dtype=torch.float32)
    valid = torch.ones(20, dtype=torch.bool)
    valid[10:] = False  # the 10 highest entropies are padding
    for strategy in ("top", "bottom", "random", "all"):
        mask = select_forking_tokens(entropy, valid, 1.0, strategy=strategy)
        assert not (mask & ~valid).any(), strategy
        assert torch.equal(mask, valid), strategy


def test_ties_at_threshold_take_smallest_flat_index_for_top():
    entropy = torch.ones(3, 4)
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[0, 1] = False
    mask = select_forking_tokens(entropy, valid, 0.3)  # 11 valid -> k = ceil(3.3) = 4
    # The first 4 valid positions in row-major order: (0,0), (0,2), (0,3), (1,0).
    expected = torch.zeros(3, 4, dtype=torch.bool)
    expected[0, 0] = expected[0, 2] = expected[0, 3] = expected[1, 0] = True
    assert torch.equal(mask, expected)


def test_ties_at_threshold_take_largest_flat_index_for_bottom():
    entropy = torch.ones(10)
    valid = torch.ones(10, dtype=torch.bool)
    valid[9] = False
    mask = select_forking_tokens(entropy, valid, 0.3, strategy="bottom")  # 9 valid -> k = 3
    assert mask.nonzero().flatten().tolist() == [6, 7, 8]


def test_ties_only_at_threshold_are_broken():
    # Strictly above the threshold: 5.0, 4.0. Tied at it: 2.0 x 4. k = 4 -> 2 of the tied.
    entropy = torch.tensor([2.0, 5.0, 2.0, 1.0, 2.0, 4.0, 2.0, 0.5])
    valid = torch.ones(8, dtype=torch.bool)
    mask = select_forking_tokens(entropy, valid, 0.5)
    assert mask.nonzero().flatten().tolist() == [0, 1, 2, 5]


def test_ties_broken_by_given_order_not_position():
    entropy = torch.ones(5)
    valid = torch.ones(5, dtype=torch.bool)
    order = torch.tensor([40, 10, 30, 0, 20])
    top = select_forking_tokens(entropy, valid, 0.4, order=order)  # k = 2: orders 0, 10
    assert top.nonzero().flatten().tolist() == [1, 3]
    bottom = select_forking_tokens(entropy, valid, 0.4, strategy="bottom", order=order)
    assert bottom.nonzero().flatten().tolist() == [0, 2]  # orders 40, 30


def test_fp64_entropies_are_ranked_in_fp32():
    """Values equal after rounding to fp32 tie, and the tie goes to the smaller index."""
    entropy = torch.tensor([1.0, 1.0 + 1e-12, 0.5], dtype=torch.float64)
    valid = torch.ones(3, dtype=torch.bool)
    assert select_forking_tokens(entropy, valid, 0.3).tolist() == [True, False, False]


def test_bf16_entropy_is_accepted():
    entropy = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.bfloat16)
    valid = torch.ones(4, dtype=torch.bool)
    assert select_forking_tokens(entropy, valid, 0.5).tolist() == [False, True, False, True]


@pytest.mark.parametrize("rho", [0.1, 0.35, 0.8])
def test_top_rho_and_bottom_one_minus_rho_are_complementary(rho):
    entropy, valid = _random_case((60,), seed=5, levels=3)
    rho_bottom = float(1 - Fraction(str(rho)))
    top = select_forking_tokens(entropy, valid, rho)
    bottom = select_forking_tokens(entropy, valid, rho_bottom, strategy="bottom")
    n = int(valid.sum())
    assert exact_k(rho, n) + exact_k(rho_bottom, n) >= n
    assert torch.equal(top | bottom, valid)
    assert int((top & bottom).sum()) == exact_k(rho, n) + exact_k(rho_bottom, n) - n


def test_selection_does_not_track_gradients_or_modify_entropy():
    entropy = torch.rand(10, requires_grad=True)
    snapshot = entropy.detach().clone()
    mask = select_forking_tokens(entropy, torch.ones(10, dtype=torch.bool), 0.5)
    assert mask.dtype == torch.bool and not mask.requires_grad
    assert torch.equal(entropy.detach(), snapshot)


# ---- random and all ----------------------------------------------------------------------------


def test_random_selects_k_valid_tokens():
    entropy, valid = _random_case((7, 9), seed=6)
    mask = select_forking_tokens(entropy, valid, 0.35, strategy="random")
    assert int(mask.sum()) == exact_k(0.35, int(valid.sum()))
    assert not (mask & ~valid).any()


def test_random_is_reproducible_for_a_seed_and_changes_with_the_seed():
    entropy, valid = _random_case((200,), seed=7)
    first = select_forking_tokens(entropy, valid, 0.2, strategy="random", seed=11)
    again = select_forking_tokens(entropy, valid, 0.2, strategy="random", seed=11)
    other = select_forking_tokens(entropy, valid, 0.2, strategy="random", seed=12)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert int(other.sum()) == int(first.sum())


def test_random_ignores_entropy_values():
    entropy, valid = _random_case((100,), seed=8)
    a = select_forking_tokens(entropy, valid, 0.3, strategy="random", seed=3)
    b = select_forking_tokens(torch.rand(100) * 5, valid, 0.3, strategy="random", seed=3)
    assert torch.equal(a, b)


def test_random_is_not_top_or_bottom_and_spreads_over_positions():
    n = 1000
    entropy = torch.arange(n, dtype=torch.float32)
    valid = torch.ones(n, dtype=torch.bool)
    mask = select_forking_tokens(entropy, valid, 0.5, strategy="random", seed=0)
    assert not torch.equal(mask, select_forking_tokens(entropy, valid, 0.5))
    assert not torch.equal(mask, select_forking_tokens(entropy, valid, 0.5, strategy="bottom"))
    # 500 of 1000 positions: each half of the sequence should hold roughly half of them.
    assert 200 <= int(mask[: n // 2].sum()) <= 300


def test_random_depends_on_order_not_memory_layout():
    entropy, valid = _random_case((64,), seed=9)
    order = torch.arange(64) * 3 + 5
    mask = select_forking_tokens(entropy, valid, 0.3, strategy="random", seed=4, order=order)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(2))
    mask_perm = select_forking_tokens(
        entropy[perm], valid[perm], 0.3, strategy="random", seed=4, order=order[perm]
    )
    assert set(order[mask].tolist()) == set(order[perm][mask_perm].tolist())


@pytest.mark.parametrize("strategy", ["top", "bottom"])
def test_top_and_bottom_depend_on_order_not_memory_layout(strategy):
    entropy, valid = _random_case((64,), seed=10, levels=3)
    order = torch.arange(64)
    mask = select_forking_tokens(entropy, valid, 0.3, strategy=strategy, order=order)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    mask_perm = select_forking_tokens(
        entropy[perm], valid[perm], 0.3, strategy=strategy, order=order[perm]
    )
    assert set(order[mask].tolist()) == set(order[perm][mask_perm].tolist())


@pytest.mark.parametrize("rho", [0.1, 0.5, 1.0])
def test_all_selects_the_valid_mask(rho):
    entropy, valid = _random_case((5, 7), seed=11)
    assert torch.equal(select_forking_tokens(entropy, valid, rho, strategy="all"), valid)


@pytest.mark.parametrize("strategy", ["top", "bottom", "random", "all"])
def test_no_valid_token_selects_nothing(strategy):
    entropy = torch.rand(3, 4)
    valid = torch.zeros(3, 4, dtype=torch.bool)
    mask = select_forking_tokens(entropy, valid, 0.5, strategy=strategy)
    assert mask.shape == (3, 4) and not mask.any()


@pytest.mark.parametrize("strategy", ["top", "bottom", "random", "all"])
def test_empty_input_selects_nothing(strategy):
    mask = select_forking_tokens(
        torch.zeros(0), torch.zeros(0, dtype=torch.bool), 0.5, strategy=strategy
    )
    assert mask.shape == (0,)


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "bad"),
    [("top", float("nan")), ("top", float("-inf")), ("bottom", float("inf"))]
    + [("random", float("nan")), ("all", float("nan"))],
)
def test_non_finite_entropy_on_valid_token_raises(strategy, bad):
    entropy = torch.tensor([0.1, bad, 0.3])
    valid = torch.ones(3, dtype=torch.bool)
    with pytest.raises(FloatingPointError, match="non-finite entropy"):
        select_forking_tokens(entropy, valid, 0.5, strategy=strategy)


def test_nan_entropy_on_invalid_token_is_ignored():
    entropy = torch.tensor([0.1, float("nan"), 0.3, 0.2])
    valid = torch.tensor([True, False, True, True])
    mask = select_forking_tokens(entropy, valid, 0.5)
    assert mask.tolist() == [False, False, True, True]


@pytest.mark.parametrize("rho", [0, 0.0, -0.1, 1.5, float("nan"), float("inf")])
@pytest.mark.parametrize("strategy", ["top", "bottom", "random"])
def test_bad_rho_raises_value_error(rho, strategy):
    with pytest.raises(ValueError, match="rho must be in"):
        select_forking_tokens(torch.rand(4), torch.ones(4, dtype=torch.bool), rho, strategy)


def test_unknown_strategy_raises_value_error():
    with pytest.raises(ValueError, match="unknown strategy 'highest'"):
        select_forking_tokens(torch.rand(4), torch.ones(4, dtype=torch.bool), 0.5, "highest")


def test_shape_mismatch_raises_value_error():
    with pytest.raises(ValueError, match="differ"):
        select_forking_tokens(torch.rand(4), torch.ones(5, dtype=torch.bool), 0.5)
    with pytest.raises(ValueError, match="differ"):
        select_forking_tokens(torch.rand(2, 3), torch.ones(3, 2, dtype=torch.bool), 0.5)


def test_order_shape_mismatch_raises_value_error():
    with pytest.raises(ValueError, match="order"):
        select_forking_tokens(
            torch.rand(4), torch.ones(4, dtype=torch.bool), 0.5, order=torch.arange(5)
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.uint8])
def test_non_bool_mask_raises_type_error(dtype):
    with pytest.raises(TypeError, match="valid_mask must be bool"):
        select_forking_tokens(torch.rand(4), torch.ones(4, dtype=dtype), 0.5)


def test_device_mismatch_raises_value_error_meta_device():
    valid = torch.ones(4, dtype=torch.bool, device="meta")
    with pytest.raises(ValueError, match="entropy on cpu but valid_mask on meta"):
        select_forking_tokens(torch.rand(4), valid, 0.5)


def test_order_outside_32_bits_is_rejected():
    ties = torch.zeros(8)
    valid = torch.ones(8, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"outside \[0, 2\*\*32\)"):
        select_forking_tokens(ties, valid, 0.25, order=torch.arange(8) * 2**32)
    with pytest.raises(ValueError, match=r"outside"):
        select_forking_tokens(ties, valid, 0.25, order=torch.arange(8) - 1)


def test_duplicate_order_at_the_threshold_is_rejected_not_miscounted():
    # 8 tied tokens, k = 2, orders 0,1,2,0,1,2,0,1: the two smallest orders are not unique.
    with pytest.raises(ValueError, match="not unique"):
        select_forking_tokens(
            torch.zeros(8), torch.ones(8, dtype=torch.bool), 0.25, order=torch.arange(8) % 3
        )
