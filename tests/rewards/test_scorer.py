"""The batch reward through worker processes: statuses, counts, rewards, the 1/0 option, use
from a non-main thread, and the time limit (a hung worker is killed and replaced).

Worker pools take a second or two to start, so one scorer is shared per module."""

import os
import threading
import time

import pytest

from megatron_fork.rewards import (
    MathRewardConfig,
    MathRewardScorer,
    SampleStatus,
    score_responses,
)
from megatron_fork.rewards.equivalence import math_verify_equal

SMALL = dict(max_response_tokens=100, overlong_buffer=20)
"""Overlong penalty: 0 up to 80 tokens, -(L - 80) / 20 up to 100, -1 beyond."""


def verify_or_misbehave(gold: str, answer: str) -> bool:
    """Test stand-in for math-verify (module level: it is pickled into the workers). The answer
    HANG never returns; DIE kills its worker process; anything else is math-verify's verdict."""
    if answer == "HANG":
        time.sleep(1e6)
    if answer == "DIE":
        os._exit(1)
    return math_verify_equal(gold, answer)


@pytest.fixture(scope="module")
def scorer():
    with MathRewardScorer(MathRewardConfig(**SMALL)) as shared:
        yield shared


@pytest.fixture(scope="module")
def misbehaving_scorer():
    config = MathRewardConfig(**SMALL, time_limit_s=2.0)
    with MathRewardScorer(config, verify_fn=verify_or_misbehave) as shared:
        yield shared


def test_statuses_counts_and_rewards(scorer):
    huge = "reasoning " * 200_000 + r"so the answer is \boxed{\dfrac{1}{2}}"  # ~2 MB
    cases = [  # (response, gold, length, expected status, expected reward)
        (r"\boxed{0.5}", r"\frac{1}{2}", 10, SampleStatus.CORRECT, 1.0),
        (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", 90, SampleStatus.CORRECT, 1.0 - 0.5),
        (r"\boxed{[1,2)}", "(1,2)", 10, SampleStatus.INCORRECT, -1.0),
        (r"\boxed{-3}", "3", 10, SampleStatus.INCORRECT, -1.0),
        (r"\boxed{5\text{ cm}}", "5", 10, SampleStatus.CORRECT, 1.0),
        (r"first \boxed{3}, no: \boxed{4}", "4", 10, SampleStatus.CORRECT, 1.0),
        (r"first \boxed{3}, no: \boxed{4}", "3", 10, SampleStatus.INCORRECT, -1.0),
        (r"\boxed{\frac{1}{\sqrt{4}}}", "0.5", 10, SampleStatus.CORRECT, 1.0),
        (r"\boxed{\frac{1}{2}", "0.5", 10, SampleStatus.NO_ANSWER, -1.0),  # unbalanced
        ("the answer is 7", "7", 100, SampleStatus.NO_ANSWER, -1.0 - 1.0),  # no box, at L_max
        (r"\boxed{)(}", "3", 10, SampleStatus.INCORRECT, -1.0),  # malformed inside a box
        (r"\boxed{3}", "", 10, SampleStatus.ERROR, -1.0),  # unparseable gold: a data error
        (huge, "0.5", 120, SampleStatus.CORRECT, 1.0 - 1.0),  # truncated
    ]
    batch = scorer.score([c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases])
    assert [s.status for s in batch.samples] == [c[3] for c in cases]
    assert batch.rewards == pytest.approx([c[4] for c in cases], abs=1e-12)
    counts = batch.counts
    assert (counts.total, counts.verified, counts.correct) == (13, 10, 6)
    assert (counts.no_answer, counts.timeouts, counts.errors) == (2, 0, 1)
    assert batch.samples[1].overlong_reward == pytest.approx(-0.5)
    assert batch.samples[1].correctness_reward == 1.0
    assert batch.samples[8].answer is None
    assert "gold" in batch.samples[11].detail


def test_empty_batch(scorer):
    batch = scorer.score([], [], [])
    assert batch.rewards == [] and batch.counts.total == 0


def test_mismatched_lengths_raise(scorer):
    with pytest.raises(ValueError):
        scorer.score([r"\boxed{1}"], ["1", "2"], [1])


def test_works_from_a_non_main_thread(scorer):
    results = []
    thread = threading.Thread(
        target=lambda: results.append(scorer.score([r"\boxed{0.5}"], [r"\frac12"], [1]))
    )
    thread.start()
    thread.join(timeout=60)
    assert results[0].samples[0].status is SampleStatus.CORRECT


def test_one_zero_option_with_shaping():
    config = MathRewardConfig(**SMALL, correct_reward=1.0, incorrect_reward=0.0, num_workers=1)
    batch = score_responses(
        [r"\boxed{0.5}", r"\boxed{0.6}", "no box", r"\boxed{0.5}"],
        ["1/2", "1/2", "1/2", "1/2"],
        [10, 10, 85, 95],
        config,
    )
    # correct 1; wrong 0; no box 0 - 0.25; correct 1 - 0.75
    assert batch.rewards == pytest.approx([1.0, 0.0, -0.25, 0.25], abs=1e-12)
    assert (batch.counts.correct, batch.counts.verified, batch.counts.no_answer) == (2, 3, 1)


def test_hung_sample_times_out_and_worker_is_replaced(misbehaving_scorer):
    batch = misbehaving_scorer.score(
        [r"\boxed{HANG}", r"\boxed{0.5}", r"\boxed{\sqrt{8}}"], ["1", "1/2", r"2\sqrt2"], [1, 1, 1]
    )
    assert [s.status for s in batch.samples] == [
        SampleStatus.TIMEOUT,
        SampleStatus.CORRECT,
        SampleStatus.CORRECT,
    ]
    assert batch.rewards == [-1.0, 1.0, 1.0]
    assert (batch.counts.timeouts, batch.counts.verified, batch.counts.correct) == (1, 2, 2)
    assert "exceeded" in batch.samples[0].detail
    assert misbehaving_scorer.worker_restarts >= 1
    # The next call on the same scorer runs on fresh workers.
    after = misbehaving_scorer.score([r"\boxed{\dfrac{1}{2}}"], ["0.5"], [1])
    assert after.samples[0].status is SampleStatus.CORRECT
    assert after.rewards == [1.0]


def test_dead_worker_is_an_error_and_scoring_goes_on(misbehaving_scorer):
    batch = misbehaving_scorer.score([r"\boxed{DIE}"], ["1"], [1])
    assert batch.samples[0].status is SampleStatus.ERROR
    assert batch.rewards == [-1.0] and batch.counts.errors == 1
    after = misbehaving_scorer.score([r"\boxed{0.5}", r"\boxed{2}"], ["1/2", "3"], [1, 1])
    assert [s.status for s in after.samples] == [SampleStatus.CORRECT, SampleStatus.INCORRECT]
