"""Collect on the warm-started tiny Qwen3: the token table's entropies and log-probs equal an
independent teacher-forced computation with the Hugging Face model (log_softmax of its logits,
divided by T at a temperature T != 1) for the same tokens, whether the responses were generated,
taken from another table, or given as prompt/response text; the table streams one row group per
chunk of prompts; the model sharded over TP = 2 ranks (rank 0 writing) gives the table of one
process, and when rank 0 alone fails (it cannot write the table, or build the engine) both ranks
raise its error, with no hang; bad inputs (empty prompt set, with the reasons its rows were
skipped, a tokenizer from another model, checkpoints of different vocabularies) are refused
with clear errors."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from tests.support.distributed import run_distributed

RESPONSES = ["3>2:3-2=1 \\boxed{1}<|im_end|>", "0<9:0+9=9 \\boxed{9}", "=="]
HOT = 0.7  # a temperature != 1: entropies of softmax(z / T)


def _config(model, out, tp=1, chunk_prompts=2):
    from megatron_fork.analysis.collect import CollectConfig
    from megatron_fork.trainer.trainer_config import ParallelConfig

    return CollectConfig(str(model), str(out), max_new_tokens=12, samples_per_prompt=2,
                         chunk_prompts=chunk_prompts, prompt_set="synthetic eval",
                         parallel=ParallelConfig(tensor_parallel=tp))  # fmt: skip


def _collect_worker(rank, world, base_model, folder, prompts):
    from megatron_fork.analysis.collect import collect, collect_given
    from tests.support.megatron_setup import init_megatron

    init_megatron(tp=world, seed=0)
    if world > 1:  # the TP = 2 table, then rank 0 failing alone
        collect(_config(base_model, f"{folder}/tp2.parquet", tp=2), iter(prompts))
        _rank0_failures(rank, base_model, folder, prompts)
        return
    collect(_config(base_model, f"{folder}/tokens.parquet"), iter(prompts))
    hot = replace(_config(base_model, f"{folder}/hot.parquet"), temperature=HOT)
    collect(hot, iter(prompts[:3]))
    collect_given(_config(base_model, f"{folder}/again.parquet"), f"{folder}/tokens.parquet")
    collect_given(_config(base_model, f"{folder}/text.parquet"), f"{folder}/given.jsonl")


def _no_engine(*args, **kwargs):
    raise MemoryError("no memory for the rollout engine (rank 0 only)")


def _rank0_failures(rank, base_model, folder, prompts):
    """What each rank raises when only rank 0 fails: writing under a path whose folder is a
    file (root may write anywhere, so not a permission), then building the rollout engine."""
    from megatron_fork.analysis import model_source
    from megatron_fork.analysis.collect import collect

    errors = []
    for out in (f"{folder}/blocker/w.parquet", f"{folder}/never.parquet"):
        if out.endswith("never.parquet") and rank == 0:
            model_source.TorchRolloutEngine = _no_engine
        try:
            collect(_config(base_model, out, tp=2), iter(prompts[:2]))
        except Exception as error:
            errors.append(f"{type(error).__name__}: {error}")
    Path(f"{folder}/errors_{rank}.json").write_text(json.dumps(errors))


@pytest.fixture(scope="module")
def collected(base_model, tmp_path_factory):
    from megatron_fork.data.prompt_sets import load_prompt_sets
    from tests.support.tiny_run import DATA

    folder = tmp_path_factory.mktemp("collect")
    prompts = [example.prompt for example in load_prompt_sets(DATA).eval[:5]]
    rows = [{"prompt": p, "response": r} for p, r in zip(prompts, RESPONSES, strict=False)]
    rows.append({"prompt": prompts[0]})  # no response: skipped and counted
    (folder / "given.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_distributed(_collect_worker, 1, str(base_model), str(folder), prompts)
    return folder, prompts


def _reference(model, prompt_ids, response, temperature=1.0):
    """Independent: the HF model's log_softmax(logits / T) over the whole sequence, in float64."""
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt_ids) + response])).logits[0].double()
    log_probs = (logits / temperature).log_softmax(-1)[len(prompt_ids) - 1 : -1]
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return log_probs.gather(-1, torch.tensor(response)[:, None])[:, 0], entropy


def _check_against_hf(path, base_model, prompt_ids_of, temperature=1.0):
    from transformers import AutoModelForCausalLM

    from megatron_fork.analysis.token_table import read_token_table
    from megatron_fork.data.tokenizer import load_tokenizer

    table, _ = read_token_table(path)
    tokenizer = load_tokenizer(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model).eval()
    rows = table.to_pydict()
    for sample in sorted(set(rows["sample"])):
        index = [i for i, s in enumerate(rows["sample"]) if s == sample]
        prompt_ids = prompt_ids_of(sample, tokenizer)
        assert rows["prompt_ids"][index[0]] == list(prompt_ids)
        assert rows["prompt"][index[0]] == tokenizer.decode(list(prompt_ids))
        response = [rows["token_id"][i] for i in index]
        assert [rows["position"][i] for i in index] == list(range(len(response)))
        chosen, entropy = _reference(model, prompt_ids, response, temperature)
        got_entropy = torch.tensor([rows["entropy"][i] for i in index], dtype=torch.float64)
        got_logprob = torch.tensor([rows["logprob"][i] for i in index], dtype=torch.float64)
        assert (got_entropy - entropy).abs().max() <= 1e-5, sample
        assert (got_logprob - chosen).abs().max() <= 1e-5, sample
        assert [rows["piece"][i] for i in index] == tokenizer.convert_ids_to_tokens(response)
    return table


def test_collected_entropies_equal_the_hf_models(collected, base_model):
    from megatron_fork.analysis.token_table import read_metadata

    folder, prompts = collected
    out = folder / "tokens.parquet"
    metadata = read_metadata(out)
    assert metadata["prompt_set"] == "synthetic eval" and metadata["prompts"] == 5
    assert metadata["samples"] == 10 and metadata["vocabulary"]["vocab_size"] == 23
    assert metadata["weight_version"] is None  # a Hugging Face folder has no training step
    assert pq.ParquetFile(out).num_row_groups == 3  # 5 prompts in chunks of 2
    assert not (folder / "tokens.parquet.tmp").exists()

    def prompt_of(sample, tokenizer):
        return tokenizer.encode(prompts[int(sample[1 : sample.index("#")])])

    table = _check_against_hf(out, base_model, prompt_of)
    assert table.num_rows == metadata["tokens"] > 0


def test_entropies_at_a_temperature_equal_the_hf_models_at_it(collected, base_model):
    from megatron_fork.analysis.token_table import read_metadata, read_token_table

    folder, prompts = collected
    hot = folder / "hot.parquet"
    assert read_metadata(hot)["temperature"] == HOT and read_metadata(hot)["samples"] == 6

    def prompt_of(sample, tokenizer):
        return tokenizer.encode(prompts[int(sample[1 : sample.index("#")])])

    _check_against_hf(hot, base_model, prompt_of, temperature=HOT)
    # Not the T = 1 numbers relabelled: the first token's entropy depends on the prompt alone,
    # and at T it differs from the T = 1 table's.
    cold, _ = read_token_table(folder / "tokens.parquet")
    warm, _ = read_token_table(hot)
    assert warm.column("entropy")[0].as_py() != cold.column("entropy")[0].as_py()


def test_given_responses_are_scored_token_for_token(collected, base_model):
    from megatron_fork.analysis.token_table import read_metadata, read_token_table

    folder, prompts = collected
    first, _ = read_token_table(folder / "tokens.parquet")
    again, metadata = read_token_table(folder / "again.parquet")
    assert metadata["given_by"] == str(base_model) and metadata["responses"].endswith(
        "tokens.parquet"
    )
    assert again.select(["sample", "position", "token_id", "prompt_ids"]).equals(
        first.select(["sample", "position", "token_id", "prompt_ids"])
    )
    assert pq.ParquetFile(folder / "again.parquet").num_row_groups == 3  # chunk for chunk
    assert again.column("entropy").equals(first.column("entropy"))  # the same op, same tokens

    text = folder / "text.parquet"
    assert read_metadata(text)["samples"] == len(RESPONSES)  # the row without one skipped
    table = _check_against_hf(text, base_model, lambda s, tok: tok.encode(prompts[int(s[1:]) - 1]))
    rows = table.to_pydict()
    first_text = [t for s, t in zip(rows["sample"], rows["text"], strict=True) if s == "r1"]
    assert "".join(first_text) == RESPONSES[0]  # decoded pieces put back together


def test_tensor_parallel_collect_equals_one_process(collected, base_model):
    from megatron_fork.analysis.token_table import read_token_table

    folder, prompts = collected
    (folder / "blocker").write_text("a file, not a folder")
    run_distributed(_collect_worker, 2, str(base_model), str(folder), prompts, timeout=120)
    one, _ = read_token_table(folder / "tokens.parquet")
    two, metadata = read_token_table(folder / "tp2.parquet")
    assert metadata["parallel"]["tensor_parallel"] == 2
    assert two.select(["sample", "token_id"]).equals(one.select(["sample", "token_id"]))
    for column in ("entropy", "logprob"):
        difference = torch.tensor(two.column(column).to_numpy()) - torch.tensor(
            one.column(column).to_numpy()
        )
        assert difference.abs().max() <= 1e-5, column
    # Rank 0 alone failed; both ranks raised its error (rank 1 as "rank 0 failed: ..."), so
    # neither waited in a collective (the run's timeout bounds a hang).
    first = json.loads((folder / "errors_0.json").read_text())
    second = json.loads((folder / "errors_1.json").read_text())
    assert len(first) == 2 and second == [f"RuntimeError: rank 0 failed: {e}" for e in first]
    assert "blocker/w.parquet" in first[0] and first[1] == (
        "MemoryError: no memory for the rollout engine (rank 0 only)"
    )
    assert not (folder / "never.parquet").exists()


def _bad_inputs_worker(rank, world, base_model, folder):
    from megatron_fork.analysis.collect import collect, collect_given
    from megatron_fork.analysis.prompt_source import prompt_examples
    from megatron_fork.data.report import LoadReport
    from tests.support.megatron_setup import init_megatron

    init_megatron(seed=0)
    with pytest.raises(ValueError, match=r"the prompt set is empty \(synthetic eval\)"):
        collect(_config(base_model, f"{folder}/empty.parquet"), iter([]))
    with pytest.raises(ValueError, match="the tokenizer has 27 tokens, the model's vocabulary 23"):
        collect(_config(f"{folder}/mixed", f"{folder}/mixed.parquet"), ["1 2:"])
    with pytest.raises(ValueError, match=f"{base_model} and {folder}/wide have different vocab"):
        collect_given(_config(f"{folder}/wide", f"{folder}/w.parquet"), f"{folder}/t.parquet")
    with pytest.raises(ValueError, match="no responses to score in .*none.jsonl.*missing_prompt"):
        collect_given(_config(base_model, f"{folder}/n.parquet"), f"{folder}/none.jsonl")
    # A prompt file whose rows use another key: empty, and the error says why (its LoadReport).
    read = LoadReport(f"{folder}/wrong_key.jsonl")
    prompts = (e.prompt for e in prompt_examples(f"{folder}/wrong_key.jsonl", report=read))
    with pytest.raises(
        ValueError,
        match=r"the prompt set is empty \(synthetic eval\); .*wrong_key.jsonl: kept 0 of 2 rows; "
        r"skipped 2 \(missing_prompt 2\)",
    ):
        collect(_config(base_model, f"{folder}/k.parquet"), prompts, read)


def test_bad_inputs_get_clear_errors(collected, base_model, tmp_path):
    from megatron_fork.data.synthetic_task import TASK_SYMBOLS
    from megatron_fork.data.tokenizer import build_and_save
    from tests.support.hf_folders import write_hf_folder

    folder, _ = collected
    mixed = tmp_path / "mixed"  # the base model with a tokenizer of 4 more tokens
    shutil.copytree(base_model, mixed)
    build_and_save(mixed, symbols=(*TASK_SYMBOLS, "a", "b", "c", "d"))
    write_hf_folder(tmp_path / "wide")  # a Qwen3 of 60 embedding rows, same tokenizer
    shutil.copy(folder / "tokens.parquet", tmp_path / "t.parquet")
    (tmp_path / "none.jsonl").write_text('{"response": "1"}\n')  # no prompt
    (tmp_path / "wrong_key.jsonl").write_text('{"text": "1 2:"}\n{"text": "3 4:"}\n')
    run_distributed(_bad_inputs_worker, 1, str(base_model), str(tmp_path))
    assert not list(tmp_path.glob("*.tmp"))
