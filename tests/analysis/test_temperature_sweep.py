"""The two-temperature sweep on the warm-started tiny Qwen3 with the real reward scorer: the cell
T_high = T_low = T draws exactly what plain sampling at T draws with the trainer's eval seeds
(same responses, same avg@k), while a cell with T_high != T_low changes the draws; thresholds
come from T = 1 tables only (the smallest entropy of the top rho = 0.2 of the tokens)."""

from types import SimpleNamespace

import pytest
import torch

K = 2
T = 1.3


class _Recording:
    """The real engine, keeping every sample it returns (to compare the cells' draws)."""

    def __init__(self, engine):
        self.engine, self.samples = engine, []

    def generate(self, requests):
        samples = self.engine.generate(requests)
        self.samples.append([s.output_ids for s in samples])
        return samples


def test_equal_temperatures_are_plain_sampling(base_model):
    from transformers import AutoModelForCausalLM

    from megatron_fork.analysis.temperature_sweep import SweepConfig, sweep_temperatures
    from megatron_fork.data.prompt_sets import load_prompt_sets
    from megatron_fork.data.tokenizer import load_tokenizer, special_token_ids
    from megatron_fork.rewards.config import MathRewardConfig
    from megatron_fork.rewards.scorer import MathRewardScorer
    from megatron_fork.rl.rollout_phase import GroupSampler, evaluate_avg_at_k
    from megatron_fork.rollout.torch_engine import TorchRolloutEngine
    from megatron_fork.rollout.types import SamplingParams
    from tests.support.tiny_run import DATA, MAX_NEW_TOKENS

    tokenizer = load_tokenizer(base_model)
    ids = special_token_ids(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(base_model).float()
    engine = _Recording(TorchRolloutEngine(model, pad_token_id=ids.pad))
    examples = load_prompt_sets(DATA).eval[:8]
    config = SweepConfig(high_temperatures=(0.5, T), low_temperatures=(T,), samples_per_prompt=K,
                         max_new_tokens=MAX_NEW_TOKENS, seed=7)  # fmt: skip
    reward = MathRewardConfig(max_response_tokens=MAX_NEW_TOKENS, overlong_buffer=4, num_workers=1)
    with MathRewardScorer(reward) as scorer:
        sampler = GroupSampler(engine, tokenizer, scorer, ids.eos)
        sweep = sweep_temperatures(sampler, examples, config, threshold=0.3)
        plain = SamplingParams(temperature=T, max_new_tokens=MAX_NEW_TOKENS)
        expected = evaluate_avg_at_k(sampler, examples, K, plain, seed=7)
    two_low, equal, plain_draws = engine.samples  # one generate call per cell, then plain
    cells = {(c["t_high"], c["t_low"]): c for c in sweep["cells"]}
    assert equal == plain_draws  # token for token
    assert cells[(T, T)]["avg_at_k"] == expected["eval/avg_at_k"]
    assert cells[(T, T)]["pass_at_k"] == expected["eval/pass_at_k"]
    assert two_low != equal  # T_high = 0.5 at positions >= 0.3 nats changed some draws
    assert sweep["threshold"] == 0.3 and sweep["prompts"] == 8 and len(sweep["cells"]) == 2
    with pytest.raises(ValueError, match="eval set is empty"):
        sweep_temperatures(sampler, [], config, threshold=0.3)


def test_threshold_is_the_top_rho_entropy_of_a_t1_table(tmp_path):
    from megatron_fork.analysis.temperature_sweep import SweepConfig, threshold_from_table
    from megatron_fork.analysis.token_table import Detokenizer, TokenTableWriter

    entropy = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    sample = SimpleNamespace(request_id="a", prompt_ids=(1,), output_ids=tuple(range(10)))
    words = Detokenizer(str, lambda ids: " ".join(map(str, ids)))
    for temperature in (1.0, 0.7):
        with TokenTableWriter(
            tmp_path / f"{temperature}.parquet", {"temperature": temperature}
        ) as t:
            t.write([sample], [(torch.zeros(10), entropy)], words)
    # The top 20% of 10 tokens: 0.9 and 0.8 (k = 2); the threshold is the smaller, 0.8.
    assert threshold_from_table(tmp_path / "1.0.parquet", 0.2) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="entropies at temperature 0.7"):
        threshold_from_table(tmp_path / "0.7.parquet", 0.2)
    with pytest.raises(ValueError, match="every T_high must be > 0"):
        SweepConfig(high_temperatures=(0.0,))
    with pytest.raises(ValueError, match="rho=0.8: rho is the share of tokens kept"):
        SweepConfig(rho=0.8)
