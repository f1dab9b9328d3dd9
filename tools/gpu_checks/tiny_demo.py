"""The embedded default (recipe ``tiny_cpu``: a ~0.8M-parameter Qwen3 on the synthetic task,
the in-process torch engine) on one GPU in bf16, through the real entry points: the base model
warm-started as ``python -m recipes`` would (``recipes.tiny_qwen3_cpu.ensure_base_model``),
then ``torchrun -m recipes.train tiny_cpu`` for two RL steps (NCCL, the local layer spec:
no Transformer Engine needed). Passes when both steps log a finite loss and the engine
log-prob difference (reported, not bounded: the torch engine samples in fp32 on the CPU while
the trainer runs bf16)."""

import sys
import time

from tools.gpu_checks.core import CheckContext, CheckResult, Parts
from tools.gpu_checks.processes import run_logged, torchrun
from tools.gpu_checks.run_metrics import check_steps, describe, step_records

STEPS = [1, 2]
_WARM_START = (
    "import sys; from recipes.tiny_qwen3_cpu import ensure_base_model; "
    "ensure_base_model(sys.argv[1])"
)


def overrides(base_model, output_dir) -> list[str]:
    return [
        f"steps={len(STEPS)}",
        "precision.params=bf16",
        f"base_model={base_model}",
        f"output_dir={output_dir}",
        "checkpoint_every=0",  # one checkpoint, at the end
        "eval.max_prompts=64",
        "tensorboard=False",
        "progress=False",
    ]


def check(ctx: CheckContext) -> CheckResult:
    deadline = time.monotonic() + ctx.timeout_s - 40  # room to stop and report
    parts = Parts()
    base, run = ctx.work / "base_model", ctx.work / "run"

    def warm_start():
        seconds = run_logged(
            [sys.executable, "-c", _WARM_START, str(ctx.work)],
            ctx.work / "warm_start.log",
            deadline,
        )
        return f"{base} in {seconds:.0f} s", None

    def train():
        command = torchrun(1, "recipes.train", ["tiny_cpu", *overrides(base, run)])
        seconds = run_logged(command, ctx.work / "train.log", deadline)
        parts.figures["train_s"] = seconds
        return f"{len(STEPS)} steps in {seconds:.0f} s", None

    def metrics():
        figures = check_steps(step_records(run), STEPS)
        parts.figures.update(figures)
        return describe(figures, STEPS), None

    parts.step("warm start (CUDA)", warm_start)
    parts.step("2 RL steps, bf16", train)
    parts.step("metrics", metrics)
    summary = describe(parts.figures, STEPS) if not parts.failed else ""
    return parts.result(f"2 bf16 steps on CUDA: {summary}")
