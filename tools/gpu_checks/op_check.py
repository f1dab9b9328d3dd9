"""The log-prob/entropy op (``megatron_fork.ops.vocab_parallel_logprob_entropy``) against
Megatron's own ``tensor_parallel.vocab_parallel_cross_entropy`` on the same bf16 logits:

- log-prob = -cross-entropy per token (both fp32 from the same bf16 values);
- the logits' gradient of sum(logprob * g) against Megatron's of sum(-CE * g): both are fp32
  maths rounded into the bf16 gradient, so they may differ by one bf16 step (2^-7 relative);
- the entropy against an fp32 ``log_softmax`` computed here (Megatron has none);
- forward + backward time and peak CUDA memory of both, and their ratios (reported, not
  judged: Megatron keeps an fp32 copy of the logits for its backward, the op two chunks).

``compare_with_megatron`` takes the device, the sizes and the op, so the same comparison runs
on CPU in the tests (where a wrong op must make it fail); Megatron's parallel state must exist
(one process: ``single_process.one_process_megatron``)."""

import torch

from tools.gpu_checks.core import FAILED, PASSED, CheckContext, CheckResult
from tools.gpu_checks.single_process import (
    cuda_device,
    measure,
    one_process_megatron,
    ratio,
    size,
)

TOKENS, VOCAB = 8192, 151936
"""One 8k-token micro-batch over Qwen3's vocabulary."""
LOGPROB_ATOL = 1e-4
"""nats: fp32 sums over 151936 terms in two orders differ by ~1e-6 relative (~2e-5 here)."""
ENTROPY_ATOL = 1e-4
GRAD_RTOL = 2.0**-7
"""One bf16 step: two fp32 results ~1e-6 apart may round to neighbouring bf16 values."""


def check(ctx: CheckContext) -> CheckResult:
    one_process_megatron()
    return compare_with_megatron(cuda_device(), TOKENS, VOCAB, repeats=3)


def _inputs(device, tokens: int, vocab: int, dtype, seed: int):
    gen = torch.Generator(device).manual_seed(seed)
    logits = torch.randn(tokens, vocab, generator=gen, device=device).mul_(2).to(dtype)  # [N, V]
    target = torch.randint(0, vocab, (tokens,), generator=gen, device=device)  # [N]
    upstream = torch.randn(tokens, generator=gen, device=device)  # [N] d loss / d logprob
    return logits.requires_grad_(True), target, upstream


def _entropy_reference(logits: torch.Tensor, rows: int = 1024) -> torch.Tensor:
    """[N, V] -> [N] fp32 entropy from a plain log_softmax, a chunk of rows at a time."""
    with torch.no_grad():
        parts = []
        for chunk in logits.split(rows):
            logp = torch.log_softmax(chunk.float(), dim=-1)  # [rows, V]
            parts.append(-(logp.exp() * logp).sum(-1))
        return torch.cat(parts)


def _grad_excess(a: torch.Tensor, b: torch.Tensor, rows: int = 1024) -> float:
    """max(|a - b| - GRAD_RTOL * max(|a|, |b|)) over elements: <= 0 when within one step."""
    worst = float("-inf")
    for x, y in zip(a.split(rows), b.split(rows), strict=True):
        x, y = x.float(), y.float()
        bound = GRAD_RTOL * torch.maximum(x.abs(), y.abs())
        worst = max(worst, float(((x - y).abs() - bound).max()))
    return worst


def compare_with_megatron(
    device: torch.device,
    tokens: int,
    vocab: int,
    dtype: torch.dtype = torch.bfloat16,
    op=None,
    chunk_size: int | None = None,
    repeats: int = 1,
    seed: int = 0,
) -> CheckResult:
    """Passed when log-probs, entropies and gradients match (see the module docstring)."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from megatron_fork.ops import vocab_parallel_logprob_entropy

    if dtype == torch.float32:  # Megatron's CE subtracts in place from its fp32 copy: the input
        raise ValueError("compare on bf16/fp16 logits: Megatron's CE would modify fp32 ones")
    op = op or vocab_parallel_logprob_entropy
    logits, target, upstream = _inputs(device, tokens, vocab, dtype, seed)
    tp_group = ps.get_tensor_model_parallel_group()

    def megatron():
        logits.grad = None
        ce = vocab_parallel_cross_entropy(logits.view(tokens, 1, vocab), target.view(tokens, 1))
        (-ce.view(tokens) * upstream).sum().backward()  # ce: [N, 1] fp32
        return -ce.detach().view(tokens)

    def ours():
        logits.grad = None
        logprob, entropy = op(logits, target, tp_group, chunk_size=chunk_size)
        (logprob * upstream).sum().backward()
        return logprob.detach(), entropy.detach()

    theirs = measure(device, megatron, repeats)
    their_grad, logits.grad = logits.grad, None
    mine = measure(device, ours, repeats)
    figures = _figures(mine, theirs)
    figures["logprob_max_abs_diff"] = float((mine.output[0] - theirs.output).abs().max())
    figures["entropy_max_abs_diff"] = float(
        (mine.output[1] - _entropy_reference(logits.detach())).abs().max()
    )
    figures["grad_excess_over_one_bf16_step"] = _grad_excess(logits.grad, their_grad)
    return _verdict(figures, tokens, vocab)


def _figures(mine, theirs) -> dict:
    return {
        "op_seconds": mine.seconds,
        "megatron_seconds": theirs.seconds,
        "time_ratio_op_over_megatron": ratio(mine.seconds, theirs.seconds),
        "op_peak_bytes": mine.peak_bytes,
        "megatron_peak_bytes": theirs.peak_bytes,
        "peak_ratio_op_over_megatron": ratio(mine.peak_bytes, theirs.peak_bytes),
    }


def _verdict(f: dict, tokens: int, vocab: int) -> CheckResult:
    wrong = []
    if not f["logprob_max_abs_diff"] <= LOGPROB_ATOL:
        wrong.append(f"|logprob + CE| max {f['logprob_max_abs_diff']:.3g} > {LOGPROB_ATOL:g}")
    if not f["entropy_max_abs_diff"] <= ENTROPY_ATOL:
        wrong.append(f"|entropy - ref| max {f['entropy_max_abs_diff']:.3g} > {ENTROPY_ATOL:g}")
    if not f["grad_excess_over_one_bf16_step"] <= 0:
        wrong.append("logits gradient differs from Megatron's by more than one bf16 step")
    if wrong:
        return CheckResult(FAILED, "; ".join(wrong), f)
    cost = f"time op/Megatron {f['time_ratio_op_over_megatron']:.2f}x"
    if f["peak_ratio_op_over_megatron"] is not None:
        peaks = f"{size(f['op_peak_bytes'])} vs {size(f['megatron_peak_bytes'])}"
        cost += f", peak {f['peak_ratio_op_over_megatron']:.2f}x ({peaks})"
    detail = (
        f"{tokens} x {vocab}: |logprob + CE| max {f['logprob_max_abs_diff']:.2g}, "
        f"|entropy - ref| max {f['entropy_max_abs_diff']:.2g}, grads within one bf16 step; {cost}"
    )
    return CheckResult(PASSED, detail, f)
