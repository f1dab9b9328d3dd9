"""The templated fold task: hand-worked solutions, the decision tokens, determinism, disjoint
splits, the existing tokenizer, and the math reward on the reference solutions."""

import pytest

from megatron_fork.data.prompt_sets import TEMPLATED, DataConfig, load_prompt_sets
from megatron_fork.data.synthetic_task import solve as fold_solve
from megatron_fork.data.templated_task import (
    TemplatedTaskConfig,
    build_templated_splits,
    decision_mask,
    make_example,
    solve,
)
from megatron_fork.data.tokenizer import build_tokenizer
from megatron_fork.rewards.config import MathRewardConfig
from megatron_fork.rewards.scorer import score_responses

HAND_WORKED = (
    # 8 > 3 -> 8 - 3 = 5; 5 < 6 -> 5 + 6 = 11 = 1 (mod 10); 1 < 4 -> 1 + 4 = 5.
    "8 3 6 4 = 1: 8>3: 8-3=5 = 5 6 4 = 2: 5<6: 5+6=1 = 1 4 = 3: 1<4: 1+4=5 = 5 \\boxed{5}"
)


@pytest.fixture(scope="module")
def splits():
    return build_templated_splits(TemplatedTaskConfig())


def test_hand_worked_solutions():
    assert solve((8, 3, 6, 4)) == (HAND_WORKED, "5")
    example = make_example((8, 3, 6, 4))
    assert (example.id, example.prompt, example.answer) == ("templated-8364", "8 3 6 4:", "5")
    # 6 = 6 -> equal adds: 12 = 2 (mod 10)
    assert solve((6, 6)) == ("6 6 = 1: 6=6: 6+6=2 = 2 \\boxed{2}", "2")
    # Width 2, mod 100: 37 > 12 -> 25; 25 < 85 -> 110 = 10; padded in the text, not in the box.
    assert solve((37, 12, 85), width=2) == (
        "37 12 85 = 1: 37>12: 37-12=25 = 25 85 = 2: 25<85: 25+85=10 = 10 \\boxed{10}",
        "10",
    )
    assert solve((3, 4), width=2)[0] == "03 04 = 1: 03<04: 03+04=07 = 07 \\boxed{7}"


def test_same_answers_as_the_fold_task(splits):
    for example in splits.heldout[:200]:
        numbers = tuple(int(n) for n in example.prompt[:-1].split())
        assert fold_solve(numbers)[1] == example.answer


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="two numbers"):
        solve((3,))
    with pytest.raises(ValueError, match="two numbers"):
        solve((3, 10))
    with pytest.raises(ValueError, match="terms"):
        TemplatedTaskConfig(terms=6)
    with pytest.raises(ValueError, match="heldout_size"):
        TemplatedTaskConfig(terms=2, heldout_size=100)
    with pytest.raises(ValueError, match="task"):
        DataConfig(task="nope")


def test_decision_tokens_are_the_comparisons_and_results():
    pieces = build_tokenizer().encode(HAND_WORKED).tokens
    mask = decision_mask(pieces)
    assert [p for p, d in zip(pieces, mask, strict=True) if d] == [">", "5", "<", "1", "<", "5"]
    assert len(pieces) == 77  # + the end token: 6 decisions in 78 tokens
    wide = build_tokenizer().encode(solve((37, 12, 85), width=2)[0]).tokens
    assert [p for p, d in zip(wide, decision_mask(wide), strict=True) if d] == list(">25<10")
    # A malformed response: only well-formed spans count.
    assert decision_mask(["1", ":", " ", "4", "?", "2"]) == [False] * 6


def test_deterministic_from_seed_and_disjoint(splits):
    assert build_templated_splits(TemplatedTaskConfig()) == splits
    other = build_templated_splits(TemplatedTaskConfig(seed=1))
    assert [e.id for e in other.heldout] != [e.id for e in splits.heldout]
    train, heldout = {e.prompt for e in splits.train}, {e.prompt for e in splits.heldout}
    assert not train & heldout
    assert (len(heldout), len(train)) == (500, 9000)
    assert len({(a, b) for e in splits.train for a, b in _steps(e.prompt)}) == 100


def _steps(prompt: str):
    numbers = [int(n) for n in prompt[:-1].split()]
    value = numbers[0]
    for n in numbers[1:]:
        yield value, n
        value = (value - n) % 10 if value > n else (value + n) % 10


def test_data_config_chooses_the_task_and_keeps_the_default():
    default = load_prompt_sets(DataConfig(synthetic_terms=2, synthetic_heldout=20))
    assert default.train[0].source == "synthetic_fold"
    sets = load_prompt_sets(DataConfig(task=TEMPLATED, synthetic_heldout=20, templated_train=50))
    assert (len(sets.train), len(sets.eval)) == (50, 20)
    assert sets.eval[0].source == "synthetic_templated"
    assert sets.eval == build_templated_splits(TemplatedTaskConfig(heldout_size=20)).heldout[:20]


def test_text_uses_only_the_tokenizer_symbols(splits):
    tokenizer = build_tokenizer()
    for example in splits.heldout[:100]:
        for text in (example.prompt, example.solution):
            encoding = tokenizer.encode(text)
            assert "<|unk|>" not in encoding.tokens
            assert tokenizer.decode(encoding.ids) == text


def test_reward_scores_reference_solutions_correct(splits):
    examples = splits.heldout[:6]
    responses = [e.solution for e in examples] + [examples[0].solution.replace("{", "{1")]
    golds = [e.answer for e in examples] * 1 + [examples[0].answer]
    config = MathRewardConfig(max_response_tokens=96, overlong_buffer=8, num_workers=1)
    batch = score_responses(responses, golds, [78] * len(responses), config)
    assert batch.rewards == [1.0] * 6 + [-1.0]


def test_recipe_runs_the_templated_task_within_the_positions(tmp_path):
    from recipes.tiny_qwen3_cpu import rl, rl_templated, templated_warm_start

    config = rl_templated(tmp_path / "base", tmp_path / "run")
    assert config.data.task == TEMPLATED and rl(tmp_path, tmp_path).data.task == "fold"
    assert templated_warm_start(tmp_path).data == config.data
    sets = load_prompt_sets(config.data)
    tokenizer = build_tokenizer()
    longest = max(len(tokenizer.encode(e.prompt + e.solution).ids) + 1 for e in sets.eval)
    prompt = max(len(tokenizer.encode(e.prompt).ids) for e in sets.eval)
    assert longest <= prompt + config.rollout.max_new_tokens
    positions = templated_warm_start(tmp_path).size.max_position_embeddings
    assert prompt + config.rollout.max_new_tokens <= positions
