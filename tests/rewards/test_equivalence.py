"""Answer equivalence through math-verify, run in-process (no pool): hand-worked pairs."""

import pytest

from megatron_fork.rewards.equivalence import GoldParseError, math_verify_equal


@pytest.mark.parametrize(
    "gold, answer, equal",
    [
        # fractions and decimals
        (r"\frac{1}{2}", "0.5", True),
        ("0.5", r"\frac{1}{2}", True),
        (r"\frac{1}{2}", r"\dfrac{1}{2}", True),
        ("1/2", r"\tfrac12", True),
        (r"\frac{3}{4}", "0.75", True),
        (r"\frac{1}{2}", "0.6", False),
        (r"\frac{1}{3}", "0.333333", True),  # equal to 6 decimal places
        (r"\frac{1}{3}", "0.333", False),  # too coarse a rounding
        # square roots
        (r"2\sqrt{2}", r"\sqrt{8}", True),
        (r"\sqrt{8}", r"2\sqrt{2}", True),
        (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}", True),
        (r"3\sqrt{2}", r"\sqrt{19}", False),
        # intervals
        ("[1, 2)", "[1,2)", True),
        ("[1,2)", r"\left[1,2\right)", True),
        ("[1,2)", "(1,2)", False),  # openness matters
        ("[1,2)", "[1,3)", False),
        (r"(-\infty, 3]", r"(-\infty,3]", True),
        (r"(-\infty,-1)\cup(1,\infty)", r"(-\infty, -1) \cup (1, \infty)", True),
        (r"(-\infty,-1)\cup(1,\infty)", r"(1,\infty)", False),
        # negative numbers
        ("-3", "-3", True),
        ("-3", "3", False),
        (r"-\frac{1}{2}", "-0.5", True),
        (r"-\frac{1}{2}", "0.5", False),
        # units and text: units after a number are ignored; text alone is not a number
        ("5", r"5\text{ cm}", True),
        (r"5\text{ cm}", "5", True),
        ("5 cm", "5", True),
        ("5", r"5\,\mathrm{cm}", True),
        ("5", r"6\text{ cm}", False),
        ("5", r"\text{five}", False),
        # gold given as LaTeX with delimiters or a box
        (r"$\frac{1}{2}$", "0.5", True),
        (r"\boxed{\frac{1}{2}}", "0.5", True),
        # an assignment reduces to its value
        ("2", "x = 2", True),
        # malformed LaTeX inside a balanced box: no crash, not equal
        ("3", r"\frac{}{2}", False),
        ("3", r"\sqrt{}", False),
        ("3", ")(", False),
        ("3", r"\frac{1}{0}", False),
    ],
)
def test_math_verify_equal(gold, answer, equal):
    assert math_verify_equal(gold, answer) is equal


def test_unparseable_gold_raises():
    with pytest.raises(GoldParseError):
        math_verify_equal("", "3")
