"""Colocation on one 8-GPU node: recipe ``qwen3_8b_1node``'s tiny variant for 2 steps, its
engines and trainer sharing the GPUs, through the real entry points:

1. the RL loop must support ``rollout.placement=colocated`` (engines release their memory while
   the trainer trains and resume it before the weight sync: issue 18, points 1-2); until it
   says so (``megatron_fork.rl.rl_loop.SUPPORTED_PLACEMENTS`` naming "colocated", read
   at run time) the check SKIPS with that reason instead of failing on a missing feature;
2. a random Hugging Face Qwen3 at Qwen3-8B's widths (2 layers, 16k vocab: ``kit_model``);
3. the CPU conversion at the recipe's TP4 (``checkpoints_convert``, as ``qwen3_check``);
4. ``torchrun --nproc-per-node=8 -m recipes.train qwen3_8b_1node`` at the recipe's own TP4 x CP2
   with steps=2 and the kit's short rollouts: local rank 0 starts the node's four sglang
   engines (TP2, ``--enable-memory-saver``) on the same 8 GPUs (``recipes.colocated_engines``);
5. both steps' metrics lines and engine log-prob diffs below ``--max-logprob-diff``.
"""

import shutil
import time

from tools.gpu_checks.core import SKIPPED, CheckContext, CheckResult, Parts
from tools.gpu_checks.kit_layout import KIT_LAYERS, KIT_VOCAB, KitLayout
from tools.gpu_checks.processes import run_logged, torchrun
from tools.gpu_checks.qwen3_check import STOP_MARGIN_S, convert_command, trainer_overrides
from tools.gpu_checks.run_metrics import check_steps, describe, step_records

RECIPE = "qwen3_8b_1node"
LAYOUT = KitLayout(tensor_parallel=4, pipeline_parallel=1, context_parallel=2,
                   engine_tensor_parallel=2)  # fmt: skip
"""The recipe's own layout: 8 training ranks; its engines (4 x TP2) on the same 8 GPUs."""
GPUS = 8
_ENGINES_ARE_OURS = ("rollout.server_urls", "rollout.server_tp_size", "rollout.master_address")


def colocation_support() -> str | None:
    """None if the RL loop runs colocated steps, else why not (read at run time: the loop's
    release/resume is being built beside this check)."""
    from megatron_fork.rl import rl_loop

    placements = getattr(rl_loop, "SUPPORTED_PLACEMENTS", ("disaggregated",))
    if "colocated" in placements:
        return None
    return (
        "the RL loop does not release/resume engines yet (megatron_fork.rl.rl_loop."
        f"SUPPORTED_PLACEMENTS={tuple(placements)!r} lacks 'colocated'; issue 18 points 1-2)"
    )


def colocated_overrides(base_model, output_dir, steps: int) -> list[str]:
    """The kit's overrides without its own engine: the job starts the colocated ones."""
    kit = trainer_overrides(LAYOUT, base_model, output_dir, "http://unused", steps)
    return [o for o in kit if not o.startswith(_ENGINES_ARE_OURS)]


def check(ctx: CheckContext) -> CheckResult:
    reason = colocation_support()
    if reason is not None:
        return CheckResult(SKIPPED, reason)
    from megatron_fork.planning import QWEN3_SIZES
    from tools.gpu_checks.kit_model import write_random_qwen3

    hf, mcore, run = ctx.work / "hf", ctx.work / "mcore", ctx.work / "run"
    deadline = time.monotonic() + ctx.timeout_s - STOP_MARGIN_S
    parts = Parts()

    def model():
        write_random_qwen3(hf, QWEN3_SIZES["qwen3_8b"], KIT_LAYERS, KIT_VOCAB)
        return f"{KIT_LAYERS} layers at Qwen3-8B's widths, vocab {KIT_VOCAB}", None

    def convert():
        env = {"CUDA_VISIBLE_DEVICES": ""}
        seconds = run_logged(convert_command(hf, mcore, LAYOUT), ctx.work / "convert.log",
                             deadline, env_updates=env)  # fmt: skip
        return f"TP{LAYOUT.tensor_parallel} in {seconds:.0f} s", None

    def train():
        command = torchrun(GPUS, "recipes.train", [RECIPE, *colocated_overrides(mcore, run, 2)])
        seconds = run_logged(command, ctx.work / "train.log", deadline)
        parts.figures["train_s"] = seconds
        return f"2 colocated steps in {seconds:.0f} s", step_records(run)

    def diff(records):
        figures = check_steps(records, [1, 2], ctx.max_logprob_diff, positive_grad_norm=True)
        parts.figures.update(figures)
        return f"{describe(figures, [1, 2])} (<= {ctx.max_logprob_diff:g})", None

    try:
        parts.step("random HF Qwen3 (8B widths)", model)
        parts.step("CPU conversion (local spec)", convert)
        records = parts.step("2 steps, engines on the training GPUs", train)
        parts.step("engine log-prob diff", lambda: diff(records))
    finally:
        for path in (hf, mcore, run / "checkpoints"):
            shutil.rmtree(path, ignore_errors=True)
    return parts.result(f"{RECIPE} tiny, colocated TP4 x CP2 + 4 engines TP2: all steps passed")
