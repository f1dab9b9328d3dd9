"""Every check of the kit by name: what it needs, which subset it belongs to, its default time
limit and the function the worker runs (``module:function`` plus JSON keyword arguments, so a
check is named without importing it)."""

from dataclasses import dataclass, field

from tools.gpu_checks.core import Needs
from tools.gpu_checks.kit_layout import kit_recipes, recipe_kit_layout

SINGLE_GPU, NODE = "single-gpu", "node"
SUBSETS = (SINGLE_GPU, NODE, "auto")


@dataclass(frozen=True)
class Check:
    name: str
    summary: str
    needs: Needs
    subset: str
    """``single-gpu``: runs with torch + megatron-core on one GPU; ``node``: the full kit."""
    target: str
    """``module:function`` the worker calls with (CheckContext, **kwargs)."""
    timeout_s: float
    kwargs: dict = field(default_factory=dict)


def _single_gpu_checks() -> list[Check]:
    one_gpu = Needs(gpus=1)
    return [
        Check(
            "tiny_demo",
            "recipe tiny_cpu on CUDA in bf16: 2 RL steps, finite loss, engine log-prob diff",
            one_gpu,
            SINGLE_GPU,
            "tools.gpu_checks.tiny_demo:check",
            420.0,
        ),
        Check(
            "logprob_op",
            "log-prob/entropy op vs Megatron's vocab_parallel_cross_entropy (8192 x 151936 "
            "bf16): match, time and peak memory",
            one_gpu,
            SINGLE_GPU,
            "tools.gpu_checks.op_check:check",
            240.0,
        ),
        Check(
            "old_pass_memory",
            "old-logprob pass: peak CUDA memory with autograd on vs off (the trainer's)",
            one_gpu,
            SINGLE_GPU,
            "tools.gpu_checks.old_pass_check:check",
            240.0,
        ),
    ]


def _node_check(recipe: str) -> Check:
    layout = recipe_kit_layout(recipe)
    pp2 = ", PP=2 weight sync over NCCL" if layout.pipeline_parallel > 1 else ""
    return Check(
        recipe,
        f"{layout.describe()}, FP8: CPU-converted checkpoint, 2 RL steps against sglang, "
        f"save + resume (distributed optimizer), engine log-prob diff{pp2}",
        Needs(gpus=layout.gpus, transformer_engine=True, sglang=True),
        NODE,
        "tools.gpu_checks.qwen3_check:check",
        480.0,
        {"recipe": recipe},
    )


def _vllm_check() -> Check:
    return Check(
        "vllm_engine",
        "vLLM engine started as the Slurm engine task starts it (VLLM_PYTHON, dev mode, the "
        "image's NCCL, dummy weights on a config + tokenizer folder): /health, one "
        "/inference/v1/generate through the trainer's client",
        Needs(gpus=1, vllm=True),
        NODE,
        "tools.gpu_checks.vllm_check:check",
        600.0,
    )


def _colocated_check() -> Check:
    return Check(
        "colocated_1node",
        "qwen3_8b_1node's tiny variant: 2 RL steps with 4 sglang engines (TP2) on the trainer's "
        "8 GPUs (TP4 x CP2), memory released and resumed each step; skips until the RL loop "
        "supports rollout.placement=colocated",
        Needs(gpus=8, transformer_engine=True, sglang=True),
        NODE,
        "tools.gpu_checks.colocated_check:check",
        600.0,
    )


def all_checks() -> list[Check]:
    nodes = [_node_check(name) for name in kit_recipes()]
    return _single_gpu_checks() + nodes + [_vllm_check(), _colocated_check()]


def check_names() -> list[str]:
    return [c.name for c in all_checks()]


def select(subset: str, only: list[str] | None = None) -> list[Check]:
    """The checks of ``subset`` ("single-gpu", or "node": every check), or those named in
    ``only`` (in the kit's order). Unknown names raise ValueError listing the names."""
    checks = all_checks()
    if only:
        unknown = [n for n in only if n not in {c.name for c in checks}]
        if unknown:
            raise ValueError(
                f"unknown check(s) {', '.join(unknown)}: choose from {', '.join(check_names())}"
            )
        return [c for c in checks if c.name in only]
    if subset == SINGLE_GPU:
        return [c for c in checks if c.subset == SINGLE_GPU]
    if subset == NODE:
        return checks
    raise ValueError(f"subset {subset!r}: choose single-gpu or node")
