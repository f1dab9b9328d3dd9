"""A run whose every round draws the same prompts twice (3 training prompts, 6 per round: each
round crosses an epoch boundary of the prompt stream) through two CPU rollout servers, which
refuse a ``/generate`` batch that repeats a request id as sglang 0.5.15.post1 does (400): the
run completes, because request ids name the step, round, prompt slot and sample, not the
prompt."""

import json
import os
import subprocess
import sys

from megatron_fork.data.prompt_sets import load_prompt_sets
from megatron_fork.rl.metrics_log import read_metrics
from megatron_fork.rl.overrides import apply_overrides
from tests.support.tiny_run import DATA, rl_config, write_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _three_prompts(path):
    """The synthetic task's first three training prompts, as a DAPO-layout file."""
    rows = [
        {
            "prompt": e.prompt,
            "reward_model": {"ground_truth": e.answer},
            "extra_info": {"index": e.id},
        }
        for e in load_prompt_sets(DATA).train[:3]
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rounds_that_repeat_prompts_run_through_servers(base_model, tmp_path):
    train = _three_prompts(tmp_path / "train.jsonl")
    changes = [
        "rollout.engine='server'",
        "rollout.servers=2",
        f"data.train='{train}'",
        "rollout.prompts_per_round=6",  # 3 prompts: every prompt twice in every round
    ]
    config = apply_overrides(rl_config(base_model, tmp_path / "run", 2), changes)
    command = [sys.executable, "-m", "megatron_fork.rl.rl_main", "--config"]
    done = subprocess.run(
        [*command, str(write_config(config, tmp_path / "run.json"))],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    assert all(r.get("rollout/requests_retried", 0.0) == 0.0 for r in records)
