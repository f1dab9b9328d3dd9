"""Peak memory of the old-logprob pass with autograd on (as before) and off (the trainer's).

Megatron's schedule runs ``forward_only=True`` passes under whatever autograd mode the caller
has. With autograd on, every layer keeps its activations for a backward that never comes; the
trainer's ``old_logprob_pass`` runs under ``torch.no_grad()``. This measures one micro-batch of
a Qwen3-style Megatron GPTModel (local spec, CPU backend, one process) through Megatron's real
schedule both ways, each in a fresh spawned process:

- peak extra RSS: the peak RSS mark (VmHWM) is reset after the model and the batch exist, so
  the figure is what the pass adds (activations, logits, the loss op's chunk buffers);
- saved for backward: bytes of the distinct storages autograd saved during the pass (the
  weights among them; 0 without grad).

Usage:  .venv/bin/python tools/bench_old_pass_memory.py [--rows 4] [--seq 2048] [--hidden 512]
        [--layers 8] [--vocab 8192] [--json OUT]
On a GPU the same comparison is one of ``tools/gpu_check.py``'s checks (CUDA peak memory).
"""

import argparse
import json
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

MIB = 2**20
MODES = ("autograd", "no_grad")


def _vm_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def policy_batch(rows: int, seq: int, vocab: int):
    """One micro-batch of random tokens, every target a response token (as the old pass sees it)."""
    from megatron_fork.trainer.policy_batch import PolicyMicroBatch

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (rows, seq), generator=gen)  # [b, s]
    return PolicyMicroBatch(
        tokens=tokens,
        position_ids=torch.arange(seq).expand(rows, seq),
        target=torch.roll(tokens, -1, dims=1),
        valid_mask=torch.ones(rows, seq, dtype=torch.bool),
        old_logprob=torch.zeros(rows, seq),
        advantages=torch.ones(rows, seq),
        token_order=torch.arange(rows * seq).view(rows, seq),
    )


def _one_process_megatron() -> None:
    import torch.distributed as dist

    from megatron_fork.trainer.actor import init_parallel
    from megatron_fork.trainer.trainer_config import ParallelConfig

    os.environ.pop("RANK", None)  # one gloo process of our own
    if not dist.is_initialized():
        init_parallel(ParallelConfig(), seed=0)


def measure(mode: str, rows: int, seq: int, hidden: int, layers: int, vocab: int) -> dict:
    """One pass in this process; call in a fresh process (the RSS mark is per process)."""
    torch.set_num_threads(2)
    _one_process_megatron()
    from megatron_fork.forking.config import ForkingLossConfig
    from megatron_fork.models.gpt import GPTShape, build_gpt_model
    from megatron_fork.trainer.actor_step import logprob_schedule, old_logprob_pass
    from megatron_fork.trainer.parallel_groups import LossGroups

    heads = max(hidden // 64, 2)
    shape = GPTShape(vocab, hidden, layers, heads, heads // 2, 3 * hidden, 64, seq)
    model = build_gpt_model(shape)
    batch, groups = policy_batch(rows, seq, vocab), LossGroups.from_parallel_state()
    config = ForkingLossConfig(vocab_size=vocab)
    saved = {}  # distinct storages autograd keeps (views of one tensor count once)

    def count_saved(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    run = old_logprob_pass if mode == "no_grad" else logprob_schedule
    base_kib = _vm_kib("VmRSS")
    _reset_peak_rss()
    with torch.autograd.graph.saved_tensors_hooks(count_saved, lambda t: t), torch.enable_grad():
        outputs = run(model, [batch], config, groups)
    peak_kib = _vm_kib("VmHWM")
    assert outputs is not None and outputs[0].logprob.shape == (rows, seq)
    return {
        "mode": mode,
        "peak_extra_mib": (peak_kib - base_kib) / 1024,
        "saved_for_backward_mib": sum(saved.values()) / MIB,
        "tokens": rows * seq,
    }


def _in_fresh_process(*args) -> dict:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(measure, *args).result()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    sizes = (args.rows, args.seq, args.hidden, args.layers, args.vocab)
    results = {mode: _in_fresh_process(mode, *sizes) for mode in MODES}
    before, after = results["autograd"], results["no_grad"]
    print(
        f"old-logprob pass, one micro-batch of {args.rows} x {args.seq} tokens, hidden "
        f"{args.hidden}, {args.layers} layers, vocab {args.vocab} (CPU, fp32, one process)"
    )
    print(f"{'mode':<10} {'peak extra':>12} {'saved for backward':>20}")
    for r in results.values():
        peak, saved = r["peak_extra_mib"], r["saved_for_backward_mib"]
        print(f"{r['mode']:<10} {peak:>8.0f} MiB {saved:>16.0f} MiB")
    ratio = after["peak_extra_mib"] / max(before["peak_extra_mib"], 1e-9)
    print(f"peak extra no_grad / autograd: {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "peak_ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
