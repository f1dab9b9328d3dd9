"""Properties of select_forking_tokens on random inputs (hypothesis).

Entropies come from a few values so that ties are common; rho is a decimal with three digits so
that k = ceil(rho * n) has one exact answer (Fraction(str(rho)))."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_fork.forking import select_forking_tokens
from tests.support.reference import exact_k as reference_exact_k

ENTROPY_LEVELS = (0.0, 0.125, 0.5, 0.5000001, 1.0, 2.75)

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def cases(draw):
    n = draw(st.integers(min_value=0, max_value=40))
    levels = draw(st.lists(st.sampled_from(ENTROPY_LEVELS), min_size=1, max_size=3, unique=True))
    entropy = torch.tensor(
        draw(st.lists(st.sampled_from(levels), min_size=n, max_size=n)), dtype=torch.float32
    )
    valid = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.bool)
    # Padding gets extreme entropies so that selecting it would change the answer.
    entropy = torch.where(valid, entropy, torch.where(torch.arange(n) % 2 == 0, 99.0, -99.0))
    rho_thousandths = draw(st.integers(min_value=1, max_value=1000))
    return entropy, valid, rho_thousandths


def exact_k(rho_thousandths: int, n: int) -> int:
    return reference_exact_k(rho_thousandths / 1000, n)


@SETTINGS
@given(cases())
def test_top_count_padding_and_threshold(case):
    entropy, valid, m = case
    rho = m / 1000
    top = select_forking_tokens(entropy, valid, rho, strategy="top")
    n_valid = int(valid.sum())
    assert int(top.sum()) == exact_k(m, n_valid)
    assert not (top & ~valid).any()
    unselected = valid & ~top
    if top.any() and unselected.any():
        assert entropy[top].min() >= entropy[unselected].max()
    # Ties at the threshold go to the smallest index: an unselected token with the threshold
    # entropy comes after every selected token of that entropy.
    if top.any():
        threshold = entropy[top].min()
        tied_sel = (top & (entropy == threshold)).nonzero().flatten()
        tied_unsel = (unselected & (entropy == threshold)).nonzero().flatten()
        if len(tied_unsel):
            assert tied_sel.max() < tied_unsel.min()


@SETTINGS
@given(cases())
def test_top_and_bottom_complement(case):
    entropy, valid, m = case
    n = int(valid.sum())
    top = select_forking_tokens(entropy, valid, m / 1000, strategy="top")
    if m == 1000:
        assert torch.equal(top, valid)
        return
    bottom = select_forking_tokens(entropy, valid, (1000 - m) / 1000, strategy="bottom")
    k_top, k_bottom = exact_k(m, n), exact_k(1000 - m, n)
    assert int(bottom.sum()) == k_bottom
    assert not (bottom & ~valid).any()
    assert torch.equal(top | bottom, valid)
    overlap = int((top & bottom).sum())
    if k_top + k_bottom == n:
        assert overlap == 0
    else:
        assert overlap == k_top + k_bottom - n
    if bottom.any() and (valid & ~bottom).any():
        assert entropy[bottom].max() <= entropy[valid & ~bottom].min()


@SETTINGS
@given(cases(), st.integers(min_value=0, max_value=2**31 - 1))
def test_random_count_matches_top_count(case, seed):
    entropy, valid, m = case
    rand = select_forking_tokens(entropy, valid, m / 1000, strategy="random", seed=seed)
    assert int(rand.sum()) == exact_k(m, int(valid.sum()))
    assert not (rand & ~valid).any()
