"""The kit's check bodies that run on a CPU, at small sizes: the op against Megatron's
``vocab_parallel_cross_entropy`` and the old-pass comparison pass on the real code and fail on
a wrong op / on the old behaviour (autograd on), so the checks can fail; and what a run's
metrics and config must show (missing steps, NaN loss, an engine diff over the limit)."""

import dataclasses
import json
import math

import pytest
import torch

from tests.support.distributed import run_distributed
from tools.gpu_checks.core import FAILED, PASSED, CheckFailed
from tools.gpu_checks.run_metrics import check_steps, step_records


def _shifted(offset_lp=0.0, offset_h=0.0, grad_scale=1.0):
    """The real op with its log-prob or entropy moved, or its gradient scaled (same values)."""
    from megatron_fork.ops import vocab_parallel_logprob_entropy

    def op(logits, target, tp_group, chunk_size=None):
        lp, h = vocab_parallel_logprob_entropy(logits, target, tp_group, chunk_size=chunk_size)
        lp = lp + (grad_scale - 1.0) * (lp - lp.detach())  # value unchanged, gradient scaled
        return lp + offset_lp, h + offset_h

    return op


def _op_worker(rank, world):
    from tests.support.megatron_setup import init_megatron
    from tools.gpu_checks.op_check import compare_with_megatron

    init_megatron()
    cpu = torch.device("cpu")
    good = compare_with_megatron(cpu, 96, 1000, chunk_size=32)
    assert good.status == PASSED, good.detail
    assert good.figures["logprob_max_abs_diff"] <= 1e-5
    assert good.figures["grad_excess_over_one_bf16_step"] <= 0
    assert good.figures["op_peak_bytes"] is None  # CUDA only
    assert "time op/Megatron" in good.detail
    wrong_lp = compare_with_megatron(cpu, 96, 1000, op=_shifted(offset_lp=1e-3))
    assert wrong_lp.status == FAILED and "|logprob + CE| max 0.001" in wrong_lp.detail
    wrong_h = compare_with_megatron(cpu, 96, 1000, op=_shifted(offset_h=1e-3))
    assert wrong_h.status == FAILED and "|entropy - ref|" in wrong_h.detail
    wrong_grad = compare_with_megatron(cpu, 96, 1000, op=_shifted(grad_scale=1.05))
    assert wrong_grad.status == FAILED and wrong_grad.detail.startswith("logits gradient")
    with pytest.raises(ValueError, match="bf16/fp16"):
        compare_with_megatron(cpu, 8, 16, dtype=torch.float32)


def test_op_check_passes_on_the_op_and_fails_on_a_wrong_one():
    run_distributed(_op_worker, 1)


def _old_pass_worker(rank, world):
    from megatron_fork.models.gpt import GPTShape
    from megatron_fork.trainer.actor_step import logprob_schedule
    from tests.support.megatron_setup import init_megatron
    from tools.gpu_checks.old_pass_check import compare_passes

    init_megatron(seed=0)
    cpu = torch.device("cpu")
    shape = GPTShape(vocab_size=128, hidden_size=32, num_layers=2, max_sequence_length=16)
    good = compare_passes(cpu, shape, 2, 16, torch.float32)
    assert good.status == PASSED, good.detail
    assert good.figures["no_grad_saved_bytes"] == 0 < good.figures["autograd_saved_bytes"]
    assert good.figures["max_output_diff"] == 0.0
    old = compare_passes(cpu, shape, 2, 16, torch.float32, trainer_pass=logprob_schedule)
    assert old.status == FAILED and "the trainer's pass kept" in old.detail


def test_old_pass_check_passes_without_grad_and_fails_on_the_old_pass():
    run_distributed(_old_pass_worker, 1)


def _write_metrics(run_dir, records):
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": step, **fields}) for step, fields in records.items()]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


STEP = {"train/loss": 0.5, "train/engine_logprob_abs_diff": 0.01, "optim/grad_norm": 0.3}


def test_metrics_of_a_good_run(tmp_path):
    _write_metrics(tmp_path, {0: {"eval/avg_at_k": 0.1}, 1: STEP, 2: {**STEP, "train/loss": -1}})
    figures = check_steps(step_records(tmp_path), [1, 2], 0.05, positive_grad_norm=True)
    assert figures["step2/loss"] == -1.0 and figures["step1/engine_logprob_abs_diff"] == 0.01
    assert figures["step2/grad_norm"] == 0.3


@pytest.mark.parametrize(
    ("step2", "message"),
    [
        (None, "step 2 missing from metrics.jsonl (logged: [1])"),
        ({**STEP, "train/loss": math.nan}, "step 2: train/loss is nan, not a finite number"),
        ({"train/engine_logprob_abs_diff": 0.01}, "step 2: train/loss is None"),
        (
            {**STEP, "train/engine_logprob_abs_diff": 0.9},
            "step 2: train/engine_logprob_abs_diff 0.9 > 0.05 nats",
        ),
        ({**STEP, "optim/grad_norm": 0.0}, "step 2: optim/grad_norm is 0: no gradient reached"),
    ],
)
def test_metrics_that_fail_the_run(tmp_path, step2, message):
    _write_metrics(tmp_path, {1: STEP} if step2 is None else {1: STEP, 2: step2})
    with pytest.raises(CheckFailed) as failure:
        check_steps(step_records(tmp_path), [1, 2], 0.05, positive_grad_norm=True)
    assert str(failure.value).startswith(message)


def test_a_run_without_metrics_fails(tmp_path):
    with pytest.raises(CheckFailed, match="no metrics"):
        step_records(tmp_path)


def test_the_run_config_must_show_the_layout_fp8_and_nccl(tmp_path):
    from recipes.registry import build_recipe
    from tools.gpu_checks.kit_layout import recipe_kit_layout
    from tools.gpu_checks.qwen3_check import check_run_config, trainer_overrides

    layout = recipe_kit_layout("qwen3_32b")
    overrides = trainer_overrides(layout, tmp_path / "m", tmp_path / "r", "http://h:1", 1)
    config = build_recipe("qwen3_32b", overrides).config
    path = tmp_path / "run_config.json"
    path.write_text(json.dumps(dataclasses.asdict(config)))
    assert check_run_config(tmp_path, layout) == {"fp8": "e4m3", "fp8_recipe": "blockwise"}
    bf16 = dataclasses.replace(config, precision=dataclasses.replace(config.precision, fp8="none"))
    path.write_text(json.dumps(dataclasses.asdict(bf16)))
    with pytest.raises(CheckFailed, match="precision.fp8=none"):
        check_run_config(tmp_path, layout)
    path.write_text(json.dumps(dataclasses.asdict(config)))
    with pytest.raises(CheckFailed, match=r"parallel.pipeline_parallel=2 \(expected 1\)"):
        check_run_config(tmp_path, dataclasses.replace(layout, pipeline_parallel=1))
