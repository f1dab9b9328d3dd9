"""A Qwen3 recipe on one 8-GPU node, end to end through the real entry points, in steps:

1. a random Hugging Face Qwen3 with the recipe's widths (``kit_model``: 2 layers, 16k vocab);
2. one sglang engine on it (``engine``: dummy weights, the GPUs after the trainer's), started
   now so it loads while the checkpoint converts;
3. ``torchrun -m checkpoints_convert hf-to-mcore`` with ``CUDA_VISIBLE_DEVICES=""`` (the CPU
   backend and the local spec write it: no ``_extra_state``) at the kit's TP x PP;
4. ``torchrun -m recipes.train NAME`` for step 1 at the kit's TP/PP/CP (``kit_layout``) with
   the recipe's FP8 (every layer: ``precision.bf16_edge_layers=0``), sequence parallelism and
   distributed optimizer, the converted checkpoint as base model (loaded into the Transformer
   Engine model), the engine at ``rollout.server_urls``; it saves a checkpoint at the end;
5. the same command for ``steps=2``: it resumes from that checkpoint (model and distributed
   optimizer), keeps step 1's metrics line as it was and runs step 2;
6. both steps' ``train/engine_logprob_abs_diff`` below ``--max-logprob-diff`` and a non-zero
   gradient norm;
7. at PP=2 (qwen3_32b): the engine's log shows both stages' weight-update groups
   (``weight_update_group_stage0_*`` and ``..._stage1_*``) formed with backend nccl, one
   member per engine TP rank (sglang's "init custom process group" lines); stage 1 holds the
   last layer and the output layer, so an engine that missed its broadcast would keep dummy
   weights there and fail step 6 by about a nat.

Rollouts are short (2 prompts x 4 samples of at most 32 tokens, on the synthetic task),
dynamic sampling is off (a random model's groups would all be dropped) and a 1e-3 entropy bonus
gives the optimizer a gradient (the responses all reach the cap: equal rewards, zero
advantages). Models and checkpoints are deleted at the end (disk); logs and metrics stay.
"""

import json
import re
import shutil
import time
from pathlib import Path

from tools.gpu_checks import engine as engines
from tools.gpu_checks.core import CheckContext, CheckFailed, CheckResult, Parts
from tools.gpu_checks.kit_layout import KIT_LAYERS, KIT_VOCAB, KitLayout, recipe_kit_layout
from tools.gpu_checks.processes import run_logged, torchrun
from tools.gpu_checks.run_metrics import check_steps, describe, step_records

MAX_NEW_TOKENS = 32
STOP_MARGIN_S = 45.0
"""Kept from the check's time limit to stop the engine and report."""


def trainer_overrides(
    layout: KitLayout, base_model: Path, output_dir: Path, engine_url: str, steps: int
) -> list[str]:
    """``recipes.train NAME`` overrides of the kit's run (the recipe's own for the rest)."""
    return [
        f"steps={steps}", "checkpoint_every=0", "keep_checkpoints=1",
        f"base_model={base_model}", f"output_dir={output_dir}",
        "data.train=synthetic", "data.eval=synthetic",
        "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4",
        "rollout.prompts_per_round=2", f"rollout.max_new_tokens={MAX_NEW_TOKENS}",
        f"reward.max_response_tokens={MAX_NEW_TOKENS}", "reward.overlong_buffer=8",
        "reward.num_workers=2",
        f"rollout.server_urls=('{engine_url}',)",
        f"rollout.server_tp_size={layout.engine_tensor_parallel}",
        f"rollout.master_address={engines.LOOPBACK}",
        "rollout.engine_startup_timeout_s=600", "rollout.request_timeout_s=300",
        "mini_batches_per_step=2", "micro_batch_size=1",
        "dynamic_sampling.enabled=False", "loss.entropy_coef=0.001",
        "eval.every=0", "eval.max_prompts=4", "eval.samples_per_prompt=2",
        f"parallel.tensor_parallel={layout.tensor_parallel}",
        f"parallel.pipeline_parallel={layout.pipeline_parallel}",
        f"parallel.context_parallel={layout.context_parallel}",
        "precision.bf16_edge_layers=0",
        "tensorboard=False", "progress=False",
        "launch.engines.nodes=0",  # the engine is ours: no Slurm engine node group
    ]  # fmt: skip


def convert_command(hf: Path, out: Path, layout: KitLayout) -> list[str]:
    tp, pp = layout.tensor_parallel, layout.pipeline_parallel
    args = ["hf-to-mcore", "--hf", str(hf), "--tp", str(tp), "--pp", str(pp), "--out", str(out)]
    return torchrun(tp * pp, "checkpoints_convert", args)


def check_run_config(run_dir: Path, layout: KitLayout) -> dict:
    """The run's own ``run_config.json`` shows the layout, FP8, the distributed optimizer and
    the NCCL weight sync asked for (so the run tested what the table says)."""
    config = json.loads((Path(run_dir) / "run_config.json").read_text())
    parallel, precision = config["parallel"], config["precision"]
    expected = {
        "parallel.tensor_parallel": (parallel["tensor_parallel"], layout.tensor_parallel),
        "parallel.pipeline_parallel": (parallel["pipeline_parallel"], layout.pipeline_parallel),
        "parallel.context_parallel": (parallel["context_parallel"], layout.context_parallel),
        "parallel.distributed_optimizer": (parallel["distributed_optimizer"], True),
        "rollout.weight_backend": (config["rollout"]["weight_backend"], "nccl"),
    }
    wrong = [
        f"{k}={got!r} (expected {want!r})" for k, (got, want) in expected.items() if got != want
    ]
    if precision["fp8"] == "none":
        wrong.append("precision.fp8=none (the recipe trains in FP8)")
    if wrong:
        raise CheckFailed("the run's config: " + ", ".join(wrong))
    return {"fp8": precision["fp8"], "fp8_recipe": precision["fp8_recipe"]}


_GROUP_LINE = re.compile(
    r"init custom process group: .*group_name=weight_update_group_stage(\d+)_\w+, backend=(\w+)"
)


def engine_weight_groups(engine_log: Path) -> dict[int, list[str]]:
    """Pipeline stage -> the backend of each engine TP rank that joined one of its weight-update
    groups, from sglang's log (``ModelRunner.init_weights_update_group``'s INFO line)."""
    groups: dict[int, list[str]] = {}
    for match in _GROUP_LINE.finditer(Path(engine_log).read_text(errors="replace")):
        groups.setdefault(int(match.group(1)), []).append(match.group(2))
    return groups


def check_stage_groups(engine_log: Path, stages: int, engine_tp: int) -> str:
    """Every stage's group formed over NCCL with all the engine's TP ranks (CheckFailed if
    not)."""
    groups = engine_weight_groups(engine_log)
    for stage in range(stages):
        backends = groups.get(stage, [])
        if len(backends) < engine_tp or set(backends) != {"nccl"}:
            raise CheckFailed(
                f"stage {stage}: the engine's TP ranks joined {backends or 'no'} weight-update "
                f"group(s) (expected {engine_tp} nccl; log: {engine_log})"
            )
    return ", ".join(f"stage {s}: {len(groups[s])} x nccl" for s in range(stages))


def _latest_step(run_dir: Path) -> int | None:
    from megatron_fork.trainer.checkpoint import latest_checkpoint

    latest = latest_checkpoint(Path(run_dir) / "checkpoints")
    return None if latest is None else int(latest.name.split("_")[-1])


class _Kit:
    """The check's state: its folders, the engine, the deadline."""

    def __init__(self, ctx: CheckContext, recipe: str):
        self.ctx, self.recipe = ctx, recipe
        self.layout = recipe_kit_layout(recipe)
        self.hf, self.mcore, self.run = ctx.work / "hf", ctx.work / "mcore", ctx.work / "run"
        self.deadline = time.monotonic() + ctx.timeout_s - STOP_MARGIN_S
        self.port = engines.free_port()
        self.engine = None
        self.parts = Parts()

    @property
    def engine_watch(self):
        return ("sglang engine", self.engine, self.ctx.work / "engine.log")

    def write_model(self):
        from megatron_fork.planning import QWEN3_SIZES
        from tools.gpu_checks.kit_model import write_random_qwen3

        start = time.monotonic()
        size = QWEN3_SIZES[self.recipe]
        write_random_qwen3(self.hf, size, KIT_LAYERS, KIT_VOCAB)
        return (
            f"{KIT_LAYERS} layers, hidden {size.hidden_size}, {size.num_attention_heads}/"
            f"{size.num_query_groups} heads, SwiGLU {size.ffn_hidden_size}, vocab {KIT_VOCAB} "
            f"in {time.monotonic() - start:.0f} s",
            None,
        )

    def start_engine(self):
        command, env = engines.engine_launch(
            self.recipe, self.layout, self.hf, self.port, self.ctx.work / "engine_scratch"
        )
        self.engine = engines.start(command, env, self.ctx.work / "engine.log")
        first, last = self.layout.train_gpus, self.layout.gpus - 1
        return f"port {self.port}, GPUs {first}-{last} (loads while the trainer starts)", None

    def convert(self):
        seconds = run_logged(
            convert_command(self.hf, self.mcore, self.layout),
            self.ctx.work / "convert.log",
            self.deadline,
            env_updates={"CUDA_VISIBLE_DEVICES": ""},
        )
        self.parts.figures["convert_s"] = seconds
        return f"{self.mcore} at {self.layout.describe().split(' + ')[0]} in {seconds:.0f} s", None

    def train(self, steps: int) -> float:
        url = f"http://{engines.LOOPBACK}:{self.port}"
        overrides = trainer_overrides(self.layout, self.mcore, self.run, url, steps)
        command = torchrun(self.layout.train_gpus, "recipes.train", [self.recipe, *overrides])
        log = self.ctx.work / f"train_steps{steps}.log"
        return run_logged(command, log, self.deadline, watch=self.engine_watch)

    def first_run(self):
        seconds = self.train(steps=1)
        self.parts.figures.update(check_run_config(self.run, self.layout))
        records = step_records(self.run)
        if 1 not in records or _latest_step(self.run) != 1:
            raise CheckFailed(f"after step 1: no step-1 metrics or checkpoint in {self.run}")
        self.parts.figures["step1_s"] = seconds
        fp8 = self.parts.figures["fp8"]
        return f"{self.layout.describe()}, FP8 {fp8}, saved step 1 in {seconds:.0f} s", records[1]

    def resumed_run(self, step1: dict):
        seconds = self.train(steps=2)
        records = step_records(self.run)
        if records.get(1) != step1:
            raise CheckFailed("step 1's metrics changed: the second run started over, no resume")
        if 2 not in records or _latest_step(self.run) != 2:
            raise CheckFailed(f"after the resume: no step-2 metrics or checkpoint in {self.run}")
        self.parts.figures["step2_s"] = seconds
        return f"resumed at step 1, ran and saved step 2 in {seconds:.0f} s", records

    def engine_diff(self, records: dict):
        figures = check_steps(records, [1, 2], self.ctx.max_logprob_diff, positive_grad_norm=True)
        self.parts.figures.update(figures)
        return f"{describe(figures, [1, 2])} (<= {self.ctx.max_logprob_diff:g})", None

    def pipeline_sync(self):
        layout = self.layout
        joined = check_stage_groups(
            self.ctx.work / "engine.log", layout.pipeline_parallel, layout.engine_tensor_parallel
        )
        return f"engine joined each stage's group ({joined}); its log-probs agree", None

    def clean_up(self) -> None:
        engines.stop(self.engine)
        for path in (self.hf, self.mcore, self.run / "checkpoints"):
            shutil.rmtree(path, ignore_errors=True)


def check(ctx: CheckContext, recipe: str) -> CheckResult:
    kit = _Kit(ctx, recipe)
    parts = kit.parts
    try:
        parts.step("random HF Qwen3 (recipe widths)", kit.write_model)
        parts.step("sglang engine started", kit.start_engine)
        parts.step("CPU conversion (local spec)", kit.convert)
        step1 = parts.step("step 1 from the converted checkpoint, save", kit.first_run)
        records = parts.step(
            "resume (distributed optimizer), step 2", lambda: kit.resumed_run(step1)
        )
        parts.step("engine log-prob diff", lambda: kit.engine_diff(records))
        if kit.layout.pipeline_parallel > 1:
            parts.step("PP=2 weight sync over NCCL", kit.pipeline_sync)
    finally:
        kit.clean_up()
    return parts.result(f"{kit.layout.describe()}, FP8: all steps passed")
