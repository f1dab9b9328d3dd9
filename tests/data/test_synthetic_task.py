"""The compare-and-fold task: hand-worked chains, determinism, disjoint splits, boxed answers."""

import pytest

from megatron_fork.data.synthetic_task import (
    SyntheticTaskConfig,
    build_splits,
    fold_step,
    make_example,
    pool_size,
    solve,
)
from megatron_fork.rewards.boxed import extract_last_boxed as last_boxed


@pytest.fixture(scope="module")
def splits():
    return build_splits(SyntheticTaskConfig())


def test_hand_worked_chain():
    # 8 > 3 -> 8 - 3 = 5; 5 < 6 -> 5 + 6 = 11 = 1 (mod 10); 1 < 4 -> 1 + 4 = 5.
    assert solve((8, 3, 6, 4)) == ("8>3:8-3=5 5<6:5+6=1 1<4:1+4=5 \\boxed{5}", "5")
    example = make_example((8, 3, 6, 4))
    assert (example.id, example.prompt, example.answer) == ("fold-8364", "8 3 6 4:", "5")


def test_each_branch():
    assert fold_step(7, 2) == (">", "-", 5)
    assert fold_step(2, 7) == ("<", "+", 9)
    assert fold_step(6, 6) == ("=", "+", 2)  # equal is not greater: add, 12 mod 10
    assert solve((5, 5)) == ("5=5:5+5=0 \\boxed{0}", "0")


def test_bad_digits_raise():
    with pytest.raises(ValueError, match="two digits"):
        solve((3,))
    with pytest.raises(ValueError, match="0..9"):
        solve((3, 10))


def test_config_validation():
    with pytest.raises(ValueError, match="min_terms"):
        SyntheticTaskConfig(min_terms=1)
    with pytest.raises(ValueError, match="min_terms"):
        SyntheticTaskConfig(min_terms=5, max_terms=4)
    with pytest.raises(ValueError, match="heldout_size"):
        SyntheticTaskConfig(min_terms=2, max_terms=2, heldout_size=100)


def test_deterministic_from_seed(splits):
    again = build_splits(SyntheticTaskConfig())
    assert again == splits
    other = build_splits(SyntheticTaskConfig(seed=1))
    assert [e.id for e in other.heldout] != [e.id for e in splits.heldout]


def test_splits_are_disjoint_and_cover_the_pool(splits):
    train = {e.prompt for e in splits.train}
    heldout = {e.prompt for e in splits.heldout}
    assert not train & heldout
    assert len(heldout) == len(splits.heldout) == 500  # no duplicate prompt within a split
    assert len(train) == len(splits.train) == pool_size(4, 4) - 500
    assert len({e.id for e in splits.train + splits.heldout}) == pool_size(4, 4)


def test_every_solution_ends_with_its_boxed_answer(splits):
    for example in splits.train + splits.heldout:
        assert example.solution.endswith(f"\\boxed{{{example.answer}}}")
        assert last_boxed(example.solution) == example.answer
        assert example.solution.count("\\boxed{") == 1


def test_every_branch_occurs_in_both_splits(splits):
    for split in (splits.train, splits.heldout):
        text = "".join(e.solution for e in split)
        assert all(symbol in text for symbol in (">", "<", "=", "+", "-"))


def test_mixed_lengths():
    mixed = build_splits(SyntheticTaskConfig(min_terms=2, max_terms=3, heldout_size=50, seed=3))
    lengths = {len(e.prompt.split()) for e in mixed.train}
    assert lengths == {2, 3}
    assert len(mixed.train) + len(mixed.heldout) == 1100
