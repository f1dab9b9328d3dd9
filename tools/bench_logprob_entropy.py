"""Benchmark ``vocab_parallel_logprob_entropy`` against a naive full-vocabulary PyTorch version.

For logits [tokens, V] (fp32 leaf, requires_grad) it measures forward + backward of
``(logprob * g1 + entropy * g2).sum()`` for both methods on CPU and prints time and peak extra
memory, with the op/naive ratios and the goal (memory <= 25% of naive, time <= 1.3x naive).

Each (method, V) runs in a fresh spawned child process, so the allocator state and the peak-RSS
mark of one measurement never leak into another. Inside the child the inputs are allocated first,
then the peak RSS mark (VmHWM) is reset and the baseline RSS read, so "peak extra" is what
forward + backward adds on top of the inputs. That includes the [tokens, V] gradient of the
logits, which both methods must produce.

Usage:  .venv/bin/python tools/bench_logprob_entropy.py [--tokens 4096] [--vocab 32768 151936]
        [--chunk-size N] [--repeats 3] [--temperature 1.0]
"""

import argparse
import gc
import multiprocessing
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch

from megatron_fork.ops import vocab_parallel_logprob_entropy

THREADS = 2
GOAL_MEMORY_RATIO = 0.25
GOAL_TIME_RATIO = 1.3
NAIVE_BUFFERS = 6
"""Upper bound on [tokens, V] fp32 buffers the naive method holds at its peak (measured: 5)."""
METHODS = ("naive", "op")
MIB = 2**20


# ---------------------------------------------------------------------------------------------
# The two methods under test and the shared forward + backward step.
# ---------------------------------------------------------------------------------------------


def naive_logprob_entropy(logits, target, temperature):
    """Reference: full-vocabulary log_softmax, then gather and entropy, all as [tokens, V]."""
    logp = torch.log_softmax(logits.float() / temperature, -1)
    logprob = logp.gather(-1, target[:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logprob, entropy


def op_logprob_entropy(logits, target, temperature, chunk_size):
    """The op under test, unsplit vocabulary (tp_group=None)."""
    return vocab_parallel_logprob_entropy(
        logits, target, tp_group=None, temperature=temperature, chunk_size=chunk_size
    )


def make_method(method, temperature, chunk_size):
    """A callable (logits, target) -> (logprob, entropy) for ``method`` ("naive" or "op")."""
    if method == "naive":
        return lambda logits, target: naive_logprob_entropy(logits, target, temperature)
    return lambda logits, target: op_logprob_entropy(logits, target, temperature, chunk_size)


def forward_backward(fn, logits, target, g1, g2):
    """One forward + backward of (logprob*g1 + entropy*g2).sum(); leaves logits.grad set."""
    logits.grad = None
    logprob, entropy = fn(logits, target)
    (logprob * g1 + entropy * g2).sum().backward()


def make_inputs(tokens, vocab, seed):
    """Logits fp32 [tokens, vocab] ~ N(0, 2^2) leaf with grad; targets; fixed output grads."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(tokens, vocab, generator=gen) * 2).requires_grad_()
    target = torch.randint(0, vocab, (tokens,), generator=gen)
    g1 = torch.randn(tokens, generator=gen)
    g2 = torch.randn(tokens, generator=gen)
    return logits, target, g1, g2


# ---------------------------------------------------------------------------------------------
# Memory probes (Linux /proc).
# ---------------------------------------------------------------------------------------------


def _status_kib(field):
    """A ``kB`` field of /proc/self/status (e.g. VmRSS, VmHWM), in KiB."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def reset_peak_rss():
    """Reset VmHWM (the kernel's peak-RSS mark) to the current RSS; True if that worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") <= _status_kib("VmRSS") + 1024


def mem_available_bytes():
    """MemAvailable of /proc/meminfo, in bytes: what a new child can still allocate."""
    with open("/proc/meminfo") as f:
        return int(re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


# ---------------------------------------------------------------------------------------------
# One measurement, run inside a fresh child process.
# ---------------------------------------------------------------------------------------------


def _warm_up_runtime(fn, vocab):
    """Run ``fn`` once on a tiny input so lazy library/thread-pool setup is not counted."""
    forward_backward(fn, *make_inputs(8, vocab, seed=1))
    gc.collect()


def _peak_extra_mib(fn, logits, target, g1, g2):
    """Peak RSS added by one forward + backward over the already-allocated inputs, in MiB."""
    gc.collect()
    if not reset_peak_rss():
        raise RuntimeError("cannot reset VmHWM via /proc/self/clear_refs; no peak measurement")
    baseline_kib = _status_kib("VmRSS")
    forward_backward(fn, logits, target, g1, g2)
    return (_status_kib("VmHWM") - baseline_kib) / 1024


def _median_time_s(fn, logits, target, g1, g2, repeats):
    """Median wall time of ``repeats`` forward + backward runs, after one untimed warm-up."""
    forward_backward(fn, logits, target, g1, g2)
    times = []
    for _ in range(repeats):
        logits.grad = None
        gc.collect()
        start = time.perf_counter()
        forward_backward(fn, logits, target, g1, g2)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(method, tokens, vocab, temperature, chunk_size, repeats):
    """Child-process entry: peak extra memory (first, clean) then median time for one case."""
    torch.set_num_threads(THREADS)
    fn = make_method(method, temperature, chunk_size)
    _warm_up_runtime(fn, vocab)
    inputs = make_inputs(tokens, vocab, seed=0)
    peak_mib = _peak_extra_mib(fn, *inputs)
    seconds = _median_time_s(fn, *inputs, repeats)
    return {"method": method, "vocab": vocab, "time_s": seconds, "peak_mib": peak_mib}


def run_in_child(**kwargs):
    """``measure(**kwargs)`` in a fresh spawned process; None if the child died (e.g. OOM)."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(measure, **kwargs).result()
        except BrokenProcessPool:
            return None


# ---------------------------------------------------------------------------------------------
# Driver: sanity check, per-V measurements, table.
# ---------------------------------------------------------------------------------------------


def check_agreement(vocab, temperature, chunk_size):
    """Max |op - naive| over logprob, entropy and grad on a small [64, vocab] input."""
    results = []
    for method in METHODS:
        logits, target, g1, g2 = make_inputs(64, vocab, seed=2)
        fn = make_method(method, temperature, chunk_size)
        logprob, entropy = fn(logits, target)
        (logprob * g1 + entropy * g2).sum().backward()
        results.append((logprob.detach(), entropy.detach(), logits.grad))
    return max((a - b).abs().max().item() for a, b in zip(*results, strict=True))


def fits_in_memory(tokens, vocab):
    """Whether the naive child (inputs + ~NAIVE_BUFFERS [tokens, V] fp32 buffers) should fit."""
    need = (1 + NAIVE_BUFFERS) * tokens * vocab * 4
    return need < mem_available_bytes(), need


def bench_vocab(args, vocab):
    """Both methods at one vocabulary size: {method: result dict or None if it failed}."""
    return {
        method: run_in_child(
            method=method,
            tokens=args.tokens,
            vocab=vocab,
            temperature=args.temperature,
            chunk_size=args.chunk_size,
            repeats=args.repeats,
        )
        for method in METHODS
    }


def format_rows(vocab, results):
    """Table lines for one V: a line per method, ratios op/naive on the op line."""
    naive = results["naive"]
    lines = []
    for method in METHODS:
        res = results[method]
        if res is None:
            lines.append(f"{vocab:>8}  {method:<6}  {'child died (OOM?)':>28}")
            continue
        ratios = ""
        if method == "op" and naive is not None:
            t_ratio = res["time_s"] / naive["time_s"]
            m_ratio = res["peak_mib"] / naive["peak_mib"]
            verdict = (
                "OK" if t_ratio <= GOAL_TIME_RATIO and m_ratio <= GOAL_MEMORY_RATIO else "MISS"
            )
            ratios = f"  {t_ratio:>9.2f}x  {100 * m_ratio:>9.1f}%  {verdict}"
        lines.append(
            f"{vocab:>8}  {method:<6}  {res['time_s']:>10.3f}  {res['peak_mib']:>16.1f}{ratios}"
        )
    return lines


def parse_args(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096, help="rows T of the logits")
    parser.add_argument(
        "--vocab", type=int, nargs="+", default=[32768, 151936], help="vocabulary sizes V"
    )
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="op chunk_size (default: the op's default)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature")
    parser.add_argument(
        "--force", action="store_true", help="run a V even if it looks too big for memory"
    )
    return parser.parse_args(argv)


def main(argv=None):
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    torch.set_num_threads(THREADS)
    chunk = args.chunk_size if args.chunk_size is not None else "op default"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU")
    print(
        f"tokens {args.tokens}, fp32 logits ~ N(0, 2^2), temperature {args.temperature}, "
        f"op chunk_size {chunk}, time = median of {args.repeats} (after 1 warm-up)"
    )
    diff = check_agreement(min(args.vocab), args.temperature, args.chunk_size)
    print(
        f"sanity: max |op - naive| over logprob, entropy, grad on [64, {min(args.vocab)}]: "
        f"{diff:.2e}"
    )
    print("peak extra = peak RSS during fwd+bwd minus RSS with inputs allocated; it includes")
    print(
        "the [tokens, V] fp32 grad of the logits, which both methods produce "
        f"({args.tokens} x V x 4 B)."
    )
    print()
    header = f"{'V':>8}  {'method':<6}  {'time (s)':>10}  {'peak extra (MiB)':>16}"
    print(f"{header}  {'time op/nv':>10}  {'mem op/nv':>10}")
    for vocab in args.vocab:
        ok, need = fits_in_memory(args.tokens, vocab)
        if not ok and not args.force:
            print(
                f"{vocab:>8}  skipped: naive needs ~{need / 2**30:.1f} GiB, more than "
                "MemAvailable (use --force to try)"
            )
            continue
        grad_mib = args.tokens * vocab * 4 / MIB
        for line in format_rows(vocab, bench_vocab(args, vocab)):
            print(line, flush=True)
        print(f"{'':>8}  (of which logits.grad: {grad_mib:.1f} MiB)")
    print()
    print(f"goal: memory <= {GOAL_MEMORY_RATIO:.0%} of naive, time <= {GOAL_TIME_RATIO}x naive")


if __name__ == "__main__":
    main()
