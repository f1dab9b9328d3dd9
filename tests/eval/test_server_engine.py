"""The server paths: the evaluator's command line against two real CPU rollout servers
(``python -m megatron_fork.rollout.server``, loopback HTTP) serving the Hugging Face folder,
speaking sglang's protocol (``--engine sglang``) or vLLM's (``--engine vllm``), gives the same
samples and numbers as the in-process torch engine."""

import json
import subprocess
import sys

import pytest

from megatron_fork.data.tokenizer import load_tokenizer, special_token_ids
from megatron_fork.eval.runner import evaluate
from megatron_fork.rollout.server_kinds import SERVERS
from megatron_fork.rollout.server_pool import ServerPool, cpu_server_command
from tests.eval.support import by_seed, sample_lines, tiny_settings, write_prompt_file

PROMPTS = 12


@pytest.mark.parametrize("protocol", ["sglang", "vllm"])
def test_servers_by_url_give_the_torch_engines_numbers(base_model, tmp_path, protocol):
    prompts = write_prompt_file(tmp_path / "prompts.jsonl", PROMPTS)
    torch_run = evaluate(tiny_settings(base_model, prompts, tmp_path / "torch"))
    pad = special_token_ids(load_tokenizer(base_model)).pad
    server = cpu_server_command(str(base_model), pad_token_id=pad, protocol=protocol)
    with ServerPool([server] * 2, client=SERVERS[protocol].client) as pool:
        out = tmp_path / "servers"
        command = [
            sys.executable, "-m", "megatron_fork.eval", "--model", str(base_model),
            "--prompts", str(prompts), "--out", str(out), "--k", "4", "--max-new-tokens", "16",
            "--prompts-per-batch", "5", "--reward-workers", "1",
            "--engine", protocol, "--server-url", *pool.urls,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert f"avg@4 {summary['avg_at_k']:.4f}" in done.stdout
    assert [s["model_path"] for s in summary["engine"]["servers"]] == [str(base_model)] * 2
    for key in ("avg_at_k", "pass_at_k", "prompts", "samples", "correct", "truncated"):
        assert summary[key] == torch_run[key], key
    assert by_seed(sample_lines(out)) == by_seed(sample_lines(tmp_path / "torch"))
    assert 0 < summary["avg_at_k"] < 1
