"""The old-logprob pass's memory with autograd on (``actor_step.logprob_schedule`` under
``enable_grad``: how the pass ran before it was made grad-free) and off (``old_logprob_pass``,
the trainer's), on one micro-batch of a Qwen3-8B-wide Megatron GPTModel in bf16 through
Megatron's real forward-only schedule; the CPU twin is ``tools/bench_old_pass_memory.py``,
whose batch this reuses.

Passes when the trainer's pass keeps nothing for a backward (autograd's saved tensors are
counted with ``saved_tensors_hooks``, as the benchmark does), the pass under autograd does
(else the measurement is blind), both give the same log-probs and entropies, and on CUDA the
trainer's pass peaks lower (``torch.cuda.max_memory_allocated`` above what the model and batch
hold). ``compare_passes`` takes the device, the shape and the pass under test, so it runs on
CPU in the tests, where the old behaviour must fail it."""

import dataclasses

import torch

from tools.gpu_checks.core import FAILED, PASSED, CheckContext, CheckResult
from tools.gpu_checks.single_process import (
    cuda_device,
    measure,
    one_process_megatron,
    ratio,
    size,
)

ROWS, SEQ, LAYERS = 1, 4096, 2
"""One 4k-token row through 2 layers: without Transformer Engine the local attention keeps its
[heads, s, s] scores and probabilities per layer under autograd (several GiB each), and this
subset must fit GPUs smaller than an H100."""
OUTPUT_ATOL = 1e-3
"""nats: the two passes run the same kernels; bf16 leaves room for a differently ordered sum."""


def qwen3_8b_layers(layers: int = LAYERS, seq: int = SEQ):
    """Qwen3-8B's widths (hidden 4096, 32/8 heads of 128, SwiGLU 12288, vocab 151936)."""
    from megatron_fork.models.gpt import GPTShape

    return GPTShape(151936, 4096, layers, 32, 8, 12288, 128, seq)


def check(ctx: CheckContext) -> CheckResult:
    one_process_megatron()
    return compare_passes(cuda_device(), qwen3_8b_layers(), ROWS, SEQ, torch.bfloat16)


def _model(device: torch.device, shape, dtype: torch.dtype):
    from megatron_fork.models.gpt import build_gpt_model

    options = {"bf16": True} if dtype == torch.bfloat16 else {}
    on_cpu = device.type == "cpu"
    return build_gpt_model(shape, params_dtype=dtype, on_cpu=on_cpu, transformer_options=options)


def _run_counting_saved(device, run, args) -> tuple:
    """(Measured, bytes of the distinct storages autograd saved during the measured run)."""
    saved = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    def work():
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.enable_grad():
            return run(*args)

    measured = measure(device, work)
    return measured, sum(saved.values())


def compare_passes(device, shape, rows: int, seq: int, dtype, trainer_pass=None) -> CheckResult:
    """``trainer_pass`` (default ``old_logprob_pass``) against the schedule under autograd."""
    from megatron_fork.forking.config import ForkingLossConfig
    from megatron_fork.trainer.actor_step import logprob_schedule, old_logprob_pass
    from megatron_fork.trainer.parallel_groups import LossGroups
    from megatron_fork.trainer.policy_batch import moved_to
    from tools.bench_old_pass_memory import policy_batch

    model = _model(device, shape, dtype)
    batch = moved_to(policy_batch(rows, seq, shape.vocab_size), device)
    args = (
        model,
        [batch],
        ForkingLossConfig(vocab_size=shape.vocab_size),
        LossGroups.from_parallel_state(),
    )
    before, saved_before = _run_counting_saved(device, logprob_schedule, args)
    reference = [(o.logprob.detach(), o.entropy.detach()) for o in before.output]
    before = dataclasses.replace(before, output=None)  # frees the graph
    after, saved_after = _run_counting_saved(device, trainer_pass or old_logprob_pass, args)
    diff = max(
        float(torch.maximum((o.logprob - r[0]).abs().max(), (o.entropy - r[1]).abs().max()))
        for o, r in zip(after.output, reference, strict=True)
    )
    figures = {
        "tokens": rows * seq,
        "autograd_peak_bytes": before.peak_bytes,
        "no_grad_peak_bytes": after.peak_bytes,
        "peak_ratio_no_grad_over_autograd": ratio(after.peak_bytes, before.peak_bytes),
        "autograd_saved_bytes": saved_before,
        "no_grad_saved_bytes": saved_after,
        "max_output_diff": diff,
    }
    return _verdict(figures)


def _verdict(f: dict) -> CheckResult:
    wrong = []
    if f["no_grad_saved_bytes"]:
        wrong.append(f"the trainer's pass kept {size(f['no_grad_saved_bytes'])} for a backward")
    if not f["autograd_saved_bytes"]:
        wrong.append("the pass under autograd saved nothing: the measurement cannot tell")
    if not f["max_output_diff"] <= OUTPUT_ATOL:
        wrong.append(f"outputs differ by {f['max_output_diff']:.3g}")
    peaks = f["no_grad_peak_bytes"], f["autograd_peak_bytes"]
    if peaks[0] is not None and not peaks[0] < peaks[1]:
        wrong.append(f"no lower peak without grad ({size(peaks[0])} vs {size(peaks[1])})")
    if wrong:
        return CheckResult(FAILED, "; ".join(wrong), f)
    detail = f"{f['tokens']} tokens: saved for backward {size(f['autograd_saved_bytes'])} -> 0"
    if peaks[0] is not None:
        ratio_text = f"{f['peak_ratio_no_grad_over_autograd']:.2f}x"
        detail += f"; peak {size(peaks[1])} -> {size(peaks[0])} ({ratio_text})"
    return CheckResult(PASSED, detail, f)
