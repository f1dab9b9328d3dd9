"""Collect on the warm-started tiny Qwen3: the token table's entropies and log-probs equal an
independent teacher-forced computation with the Hugging Face model (log_softmax of its logits)
for the same tokens, and the table streams one row group per chunk of prompts."""

import pyarrow.parquet as pq
import pytest
import torch

from tests.support.distributed import run_distributed


def _collect_worker(rank, world, base_model, out, prompts):
    from megatron_fork.analysis.collect import CollectConfig, collect
    from tests.support.megatron_setup import init_megatron

    init_megatron(seed=0)
    config = CollectConfig(str(base_model), out, max_new_tokens=12, samples_per_prompt=2,
                           chunk_prompts=2, prompt_set="synthetic eval")  # fmt: skip
    collect(config, prompts)
    with pytest.raises(ValueError, match="prompt set is empty"):
        collect(config, [])


def test_collected_entropies_equal_the_hf_models(base_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from megatron_fork.analysis.token_table import read_token_table
    from megatron_fork.data.prompt_sets import load_prompt_sets
    from megatron_fork.data.tokenizer import load_tokenizer
    from tests.support.tiny_run import DATA

    prompts = [example.prompt for example in load_prompt_sets(DATA).eval[:5]]
    out = tmp_path / "tokens.parquet"
    run_distributed(_collect_worker, 1, str(base_model), str(out), prompts)
    table, metadata = read_token_table(out)
    assert metadata["prompt_set"] == "synthetic eval" and metadata["prompts"] == 5
    assert pq.ParquetFile(out).num_row_groups == 3  # 5 prompts in chunks of 2
    assert table.num_rows > 0 and not (tmp_path / "tokens.parquet.tmp").exists()

    tokenizer = load_tokenizer(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model).eval()
    rows = table.to_pydict()
    for sample in sorted(set(rows["sample"])):
        index = [i for i, s in enumerate(rows["sample"]) if s == sample]
        prompt = prompts[int(sample[1 : sample.index("#")])]
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        response = [rows["token_id"][i] for i in index]
        assert [rows["position"][i] for i in index] == list(range(len(response)))
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + response])).logits[0].double()
        log_probs = logits.log_softmax(-1)[len(prompt_ids) - 1 : -1]
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        chosen = log_probs.gather(-1, torch.tensor(response)[:, None])[:, 0]
        got_entropy = torch.tensor([rows["entropy"][i] for i in index], dtype=torch.float64)
        got_logprob = torch.tensor([rows["logprob"][i] for i in index], dtype=torch.float64)
        assert (got_entropy - entropy).abs().max() <= 1e-5, sample
        assert (got_logprob - chosen).abs().max() <= 1e-5, sample
        assert [rows["piece"][i] for i in index] == tokenizer.convert_ids_to_tokens(response)
