"""The RL loop end to end on a tiny Qwen3 (warm start -> base model -> RL), as the user runs
it: the command line, real processes, the real engine, reward workers and checkpoints.

- A run killed with SIGKILL in the middle of a step and resumed from its last checkpoint logs
  exactly the metrics of an uninterrupted run (CPU is deterministic).
- The same run under torchrun with TP=2, and with PP=2, gives the uninterrupted run's first
  step: the same evaluation and rollouts (bitwise: the engine got the same weights through the
  mapping) and the same loss metrics to fp32 tolerance.
- After every weight sync the engine's log-probs of its own samples equal the trainer's
  (the metric train/engine_logprob_abs_diff, measured every step).
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from megatron_fork.rl.metrics_log import read_metrics
from tests.support.distributed import run_distributed
from tests.support.tiny_run import comparable, rl_config, write_config

STEPS = 4
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _command(config_path, nproc: int = 1) -> list[str]:
    module = ["-m", "megatron_fork.rl.rl_main", "--config", str(config_path)]
    if nproc == 1:
        return [sys.executable, *module]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, f"--nproc-per-node={nproc}", *module]


def _run(config, tmp_path, name, nproc=1, timeout=300):
    config_path = write_config(config, tmp_path / f"{name}.json")
    done = subprocess.run(
        _command(config_path, nproc), env=ENV, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return read_metrics(tmp_path / name / "metrics.jsonl")


@pytest.fixture(scope="module")
def reference(base_model, tmp_path_factory):
    """The uninterrupted single-process run."""
    tmp = tmp_path_factory.mktemp("reference")
    return _run(rl_config(base_model, tmp / "run", STEPS), tmp, "run")


def test_uninterrupted_run_logs_every_step_and_keeps_engine_in_sync(reference):
    assert [r["step"] for r in reference] == list(range(STEPS + 1))
    assert "eval/avg_at_k" in reference[0] and "eval/avg_at_k" in reference[2]
    for record in reference[1:]:
        assert record["train/engine_logprob_abs_diff"] < 1e-5, record
        assert 0 < record["train/selected_fraction"] <= 0.25  # top 20% (ceil per step)
        assert record["rollout/reward_timeouts"] == 0


def _wait_for_step(metrics_path, step, process, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        if metrics_path.is_file() and any(r["step"] >= step for r in read_metrics(metrics_path)):
            return
        time.sleep(0.05)
    raise TimeoutError(f"step {step} never logged")


def test_sigkill_mid_step_then_resume_reproduces_the_uninterrupted_run(
    base_model, reference, tmp_path
):
    config = rl_config(base_model, tmp_path / "run", STEPS, checkpoint_every=2)
    config_path = write_config(config, tmp_path / "run.json")
    process = subprocess.Popen(  # its own process group: killed whole, as a job's step is
        _command(config_path),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Step 3 logged: the checkpoint of step 2 is complete and step 4 is under way.
        _wait_for_step(tmp_path / "run" / "metrics.jsonl", 3, process)
        # The trainer and every process it started (reward workers, Megatron's checkpoint
        # writer's Manager, which watches no parent and would outlive a lone SIGKILL).
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_00000002"
    resumed = _run(config, tmp_path, "run")
    assert [r["step"] for r in resumed] == list(range(STEPS + 1))  # step 3 once, not twice
    for got, expected in zip(resumed, reference, strict=True):
        assert comparable(got) == comparable(expected), got["step"]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not list(checkpoints.glob("*.tmp"))
    assert (checkpoints / "latest").read_text() == f"step_{STEPS:08d}"


LAYOUTS = [
    "parallel.tensor_parallel=2",
    "parallel.pipeline_parallel=2",
    # Megatron's memory savers change where activations and optimizer states live, not the maths.
    "parallel.tensor_parallel=2 parallel.recompute=selective",
    "parallel.recompute=full",  # DP=2
    "parallel.distributed_optimizer=True",  # DP=2, ZeRO-1 over gloo; saves a checkpoint
]


LAYOUT_DEPENDENT = {
    "train/engine_logprob_abs_diff",
    "train/real_token_fraction",  # DP ranks pack their own samples
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_torchrun_layouts_match_the_single_process_run(base_model, reference, tmp_path, layout):
    from megatron_fork.rl.overrides import apply_overrides

    config = apply_overrides(rl_config(base_model, tmp_path / "run", 1), layout.split())
    got = _run(config, tmp_path, "run", nproc=2)
    assert [r["step"] for r in got] == [0, 1]
    assert got[0] == reference[0]  # the engine evaluates the same weights
    step, expected = comparable(got[1]), comparable(reference[1])
    assert step.keys() - expected.keys() == {"eval/avg_at_k", "eval/pass_at_k"}  # its last step
    for key, value in expected.items():
        if key.startswith(("rollout/", "dynamic_sampling/", "eval/")) or key == "step":
            assert step[key] == value, key  # same weights, same seeds: same samples
        elif value is not None and key not in LAYOUT_DEPENDENT:
            assert step[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_warm_start_saves_a_hugging_face_base_model_that_learned(base_model):
    import math

    import torch
    from transformers import Qwen3ForCausalLM

    from megatron_fork.data.prompt_sets import load_prompt_sets
    from megatron_fork.data.tokenizer import load_tokenizer
    from tests.support.tiny_run import DATA

    assert sorted(p.name for p in base_model.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert not base_model.with_name(base_model.name + ".tmp").exists()
    model = Qwen3ForCausalLM.from_pretrained(base_model).eval()
    tokenizer = load_tokenizer(base_model)
    examples = load_prompt_sets(DATA).eval
    nll = []
    for example in examples:
        prompt = tokenizer.encode(example.prompt)
        ids = torch.tensor([prompt + tokenizer.encode(example.solution)])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
        targets = ids[0, 1:]
        nll.append(-logp[len(prompt) - 1 :].gather(-1, targets[len(prompt) - 1 :, None]).mean())
    # Untrained, the NLL is about ln(vocab); the warm start must have cut it well down.
    assert float(torch.stack(nll).mean()) < 0.6 * math.log(model.config.vocab_size)


def test_other_loss_options_run_through_the_loop(base_model, tmp_path):
    """The public code's variant (per-micro-batch threshold, selected-token mean) with the KL
    term (a frozen reference model's pass) and the random control."""
    from megatron_fork.rl.overrides import apply_overrides

    config = apply_overrides(
        rl_config(base_model, tmp_path / "run", 2),
        [
            "loss.scope=local_microbatch",
            "loss.normalizer=selected_tokens",
            "loss.strategy=random",
            "loss.kl_coef=0.1",
            "loss.entropy_coef=0.01",
            "optimizer.warmup_steps=4",
        ],
    )
    records = _run(config, tmp_path, "run")
    assert [r["step"] for r in records] == [0, 1, 2]
    assert [r["optim/lr"] for r in records[1:]] == [1e-3 / 4, 1e-3 / 2]  # linear warm-up
    for record in records[1:]:
        assert record["train/engine_logprob_abs_diff"] < 1e-5
        assert record["train/loss"] is not None and record["optim/grad_norm"] > 0


def _bad_data_worker(rank, world, base_model, out_dir):
    from megatron_fork.rl.overrides import apply_overrides
    from megatron_fork.rl.rl_loop import run_rl

    config = apply_overrides(
        rl_config(base_model, out_dir, 1), ["data.eval='/nonexistent/aime.jsonl'"]
    )
    expected = FileNotFoundError if rank == 0 else RuntimeError
    with pytest.raises(expected, match="aime.jsonl"):
        run_rl(config)


def test_a_controller_error_reaches_every_rank_instead_of_a_hang(base_model, tmp_path):
    """Rank 0 cannot read the eval file: both ranks raise (rank 1 names rank 0's error). Each
    rank asserts in its worker (``pytest.raises``); ``run_distributed`` re-raises a failing
    rank's error here, and its timeout fails the test if a rank hangs."""
    run_distributed(_bad_data_worker, 2, base_model, str(tmp_path / "run"), timeout=120)


@pytest.mark.parametrize("backend", ["sglang", "vllm"])
def test_server_engine_reproduces_the_in_process_run(base_model, reference, tmp_path, backend):
    """rollout.engine=server: two CPU rollout servers in their own processes, driven through
    sglang's HTTP protocol, or vLLM's (``rollout.backend``), and fed weights over a gloo
    broadcast, give the in-process engine's run (same seeds, so the same samples; top_p = 1,
    so vLLM's processed log-probs are the trainer's)."""
    from megatron_fork.rl.overrides import apply_overrides

    changes = ["rollout.engine='server'", "rollout.servers=2", f"rollout.backend='{backend}'"]
    config = apply_overrides(rl_config(base_model, tmp_path / "run", 2), changes)
    got = _run(config, tmp_path, "run")
    assert [r["step"] for r in got] == [0, 1, 2]
    assert got[0] == reference[0]
    for step, expected in zip(got[1:], reference[1:], strict=False):
        counters = {"rollout/requests_retried": 0.0, "rollout/servers_restarted": 0.0}
        seen, wanted = comparable(step), comparable(expected)
        if backend == "vllm":  # the CPU server decodes vLLM requests one by one: other fp32
            key = "train/engine_logprob_abs_diff"  # rounding than batched, same tokens
            assert max(seen.pop(key), wanted.pop(key)) < 1e-5
        assert seen == {**wanted, **counters}, step["step"]
