r"""Final-answer extraction: last box wins, balanced braces, bounded work on huge outputs."""

import pytest

from megatron_fork.rewards.boxed import extract_last_boxed, normalize_gold


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"The answer is \boxed{42}.", "42"),
        (r"so $\boxed{\frac{1}{\sqrt{2}}}$", r"\frac{1}{\sqrt{2}}"),  # nested braces
        (r"\boxed{{{7}}}", "{{7}}"),
        (r"\boxed {7}", "7"),  # space before the brace
        ("\\boxed\n{7}", "7"),
        (r"\fbox{7}", "7"),
        (r"\boxed{ 7 }", "7"),  # content is stripped
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not count
        (r"\boxed{\left\{ x \right\}}", r"\left\{ x \right\}"),
        (r"first \boxed{3}, on reflection \boxed{4}", "4"),  # two boxes: the last
        (r"\fbox{3} then \boxed{4}", "4"),
        (r"\boxed{3} then \fbox{4}", "4"),
        (r"\boxed{\boxed{5}}", "5"),  # the box that opens last
    ],
)
def test_extracts_last_box(text, expected):
    assert extract_last_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 42.",  # no box
        "",
        r"\boxed{}",  # empty
        r"\boxed{   }",
        r"\boxed 5",  # brace-less form is not accepted
        r"\boxedx{5}",  # another macro
        r"\boxed{\frac{1}{2}",  # unbalanced: never closes
        r"\boxed{3} but then \boxed{4",  # last box unclosed: the earlier one is NOT used
        r"\boxed{3\}",  # the only closing brace is escaped
        "}{",
    ],
)
def test_no_answer(text):
    assert extract_last_boxed(text) is None


def test_box_outside_scanned_tail_is_not_seen():
    text = r"\boxed{5}" + "x" * 100
    assert extract_last_boxed(text, max_scan_chars=len(text)) == "5"
    assert extract_last_boxed(text, max_scan_chars=100) is None


def test_box_straddling_the_tail_start_is_not_seen():
    # The tail starts inside "\boxed{5}" ("oxed{5}" is not a box).
    assert extract_last_boxed(r"\boxed{5}", max_scan_chars=7) is None


def test_overlong_content_is_no_answer():
    assert extract_last_boxed(r"\boxed{" + "1" * 20 + "}", max_answer_chars=20) == "1" * 20
    assert extract_last_boxed(r"\boxed{" + "1" * 21 + "}", max_answer_chars=20) is None


def test_huge_output_with_box_at_end():
    text = "Let me think. " * 150_000 + r"Final: \boxed{\dfrac{1}{2}}"  # ~2 MB
    assert len(text) > 2_000_000
    assert extract_last_boxed(text) == r"\dfrac{1}{2}"


def test_huge_adversarial_outputs_complete():
    # Millions of openers or braces: only the capped tail is scanned, once.
    assert extract_last_boxed("\\boxed{" * 300_000) is None
    assert extract_last_boxed("{" * 2_000_000 + r"\boxed{9}") == "9"
    assert extract_last_boxed(r"\boxed{" + "{" * 2_000_000 + "}") is None


@pytest.mark.parametrize(
    "gold, expected",
    [
        ("0.5", "0.5"),
        ("  0.5\n", "0.5"),
        (r"$\frac{1}{2}$", r"\frac{1}{2}"),
        (r"$$\frac{1}{2}$$", r"\frac{1}{2}"),
        (r"\(\frac{1}{2}\)", r"\frac{1}{2}"),
        (r"\[ [1, 2) \]", "[1, 2)"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"The answer is $\boxed{7}$.", "7"),
        ("5 cm", "5 cm"),
        ("$", "$"),  # too short to be delimited: unchanged
    ],
)
def test_normalize_gold(gold, expected):
    assert normalize_gold(gold) == expected
