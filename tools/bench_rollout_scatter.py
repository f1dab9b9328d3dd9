"""Rollout hand-off, rank 0 -> training ranks: today's broadcast_object_list of every Sample
against ``rollout_scatter`` (each DP rank's own samples as flat tensors), in one run on N gloo
processes over loopback, at a scaled-down sample count; plus the per-rank bytes at the 8B
recipe's full scale (8192 samples; TP=2 x CP=2 on 64 GPUs: DP=16), computed exactly.

    python tools/bench_rollout_scatter.py [--ranks 4] [--samples 256] [--json OUT]

Lengths are long-tailed (log-normal responses clipped to 20480, mean about 8k with the
prompt); ids uniform over Qwen3's vocabulary (most above 2**16: 5 pickle bytes each, an upper
bound for real text, whose frequent tokens have small ids). Old bytes: the pickle of
(samples, advantages, trainable), which every rank receives; at full scale the sum of the
per-sample pickles (one sample at a time, so no GB of objects is held). New bytes: what a rank
receives (header + its slice's tensors); rank 0 sends every other DP rank's slice.
"""

import argparse
import json
import math
import os
import pickle
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_fork.rl.rollout_scatter import (
    HEADER,
    META_COLUMNS,
    RolloutToScatter,
    ScatterGroups,
    scatter_rollout,
)
from megatron_fork.rl.step_layout import StepLayout
from megatron_fork.rollout.types import FinishReason, Sample

VOCAB = 151_936  # Qwen3
FULL_SAMPLES, FULL_DP = 8192, 16  # 512 prompts x 16; 64 GPUs / (TP=2 x CP=2)


def lengths(n: int, mean: int, max_len: int, seed: int) -> tuple[list[int], list[int]]:
    """Prompt lengths (uniform 64..1024) and response lengths (log-normal, sigma 0.8, clipped
    to [1, max_len - prompt]) whose prompt + response mean is about ``mean``."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(64, 1025, (n,), generator=g)  # [n]
    normal = torch.randn(n, generator=g, dtype=torch.float64)  # [n]
    lo, hi = 0.0, math.log(max_len) + 2
    for _ in range(60):  # bisect the log-normal's location for the clipped mean
        mu = (lo + hi) / 2
        resp = (mu + 0.8 * normal).exp().clamp(1, None).round().long()
        resp = torch.minimum(resp, max_len - prompts)
        lo, hi = (mu, hi) if (prompts + resp).double().mean() < mean else (lo, mu)
    return prompts.tolist(), resp.tolist()


def synthetic_sample(i: int, prompt_len: int, resp_len: int, g: torch.Generator) -> Sample:
    ids = torch.randint(0, VOCAB, (prompt_len + resp_len,), generator=g).tolist()
    logprobs = (-torch.rand(resp_len, generator=g, dtype=torch.float64) * 5).tolist()
    finish = FinishReason("length") if resp_len >= 20480 - prompt_len else FinishReason("stop", 2)
    return Sample(
        f"s{i}", tuple(ids[:prompt_len]), tuple(ids[prompt_len:]), tuple(logprobs), finish, 7
    )


def step(n: int, dp: int, mean: int, max_len: int, seed: int) -> RolloutToScatter:
    """n synthetic samples, contiguous DP slices (today's layout)."""
    g = torch.Generator().manual_seed(seed + 1)
    prompts, resps = lengths(n, mean, max_len, seed)
    samples = [
        synthetic_sample(i, p, r, g) for i, (p, r) in enumerate(zip(prompts, resps, strict=True))
    ]
    per = n // dp
    assignment = [list(range(d * per, n if d == dp - 1 else (d + 1) * per)) for d in range(dp)]
    layout = StepLayout.one_microbatch(assignment)
    return RolloutToScatter(samples, torch.randn(n, generator=g), [True] * n, layout)


def scatter_bytes(prompts: list[int], resps: list[int], indices: list[int]) -> int:
    """Exact bytes one DP rank receives from rollout_scatter for the samples at ``indices``."""
    tokens = sum(prompts[i] + resps[i] for i in indices)
    responses = sum(resps[i] for i in indices)
    n = len(indices)
    schedule = 8 * 2  # one mini-batch: (micro-batches, trained)
    return 8 * len(HEADER) + 8 * META_COLUMNS * n + schedule + 4 * tokens + 4 * (responses + n)


def full_scale(args) -> dict:
    """Per-rank bytes at FULL_SAMPLES / FULL_DP: new exactly (largest slice); old as the sum of
    per-sample pickles, with the advantages and flags (measured)."""
    prompts, resps = lengths(FULL_SAMPLES, args.mean_tokens, args.max_tokens, args.seed)
    per = FULL_SAMPLES // FULL_DP
    new = max(scatter_bytes(prompts, resps, range(d * per, (d + 1) * per)) for d in range(FULL_DP))
    g = torch.Generator().manual_seed(args.seed + 1)
    old = len(pickle.dumps((torch.randn(FULL_SAMPLES), [True] * FULL_SAMPLES)))
    if args.full_pickle:
        for i, (p, r) in enumerate(zip(prompts, resps, strict=True)):
            old += len(pickle.dumps(synthetic_sample(i, p, r, g)))
    return {
        "full_samples": FULL_SAMPLES,
        "full_dp": FULL_DP,
        "full_mean_tokens": sum(prompts + resps) / FULL_SAMPLES,
        "full_max_tokens": max(p + r for p, r in zip(prompts, resps, strict=True)),
        "full_bytes_per_rank_scatter": new,
        "full_bytes_per_rank_broadcast": old if args.full_pickle else None,
    }


def _timed(fn) -> float:
    dist.barrier()
    start = time.perf_counter()
    fn()
    dist.barrier()  # the hand-off is done when the slowest rank has its samples
    return time.perf_counter() - start


def _rank(rank, world, init_file, args, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    data = step(args.samples, world, args.mean_tokens, args.max_tokens, args.seed)
    if rank != 0:
        data = None  # only rank 0 holds the rollout, as in the trainer
    groups, cpu = ScatterGroups(dp=dist.group.WORLD), torch.device("cpu")
    box = [None]

    def old():
        box[0] = [box_payload(data)] if rank == 0 else [None]
        dist.broadcast_object_list(box[0], src=0)

    def new():
        box[0] = scatter_rollout(lambda: data, groups, cpu)

    old_s = min(_timed(old) for _ in range(args.repeats))
    received = box[0][0]
    new_s = min(_timed(new) for _ in range(args.repeats))
    mine = box[0]
    if rank == 0:
        prompts = [len(s.prompt_ids) for s in received[0]]
        resps = [len(s.output_ids) for s in received[0]]
        assignment = [data.layout.assignment(d) for d in range(data.layout.dp_size)]
        new_bytes = [scatter_bytes(prompts, resps, a) for a in assignment]
        result = {
            "ranks": world,
            "samples": args.samples,
            "tokens": sum(prompts) + sum(resps),
            "broadcast_bytes_per_rank": len(pickle.dumps(box_payload(data))),
            "scatter_bytes_per_rank_max": max(new_bytes[1:], default=0),
            "scatter_bytes_sent_by_rank0": sum(new_bytes[1:]),
            "broadcast_object_bytes_per_rank": object_bytes(received[0]),
            "broadcast_seconds": old_s,
            "scatter_seconds": new_s,
        }
        with open(out_file, "w") as f:
            json.dump(result, f)
    assert mine.step_samples == args.samples
    dist.destroy_process_group()


def object_bytes(samples: list[Sample]) -> int:
    """Memory of the unpickled Samples a receiving rank holds: every tuple, int, float and str
    (sys.getsizeof, each object once; small ints are shared by the interpreter, counted once)."""
    seen, total = set(), 0
    for sample in samples:
        fields = (sample, sample.request_id, sample.prompt_ids, sample.output_ids)
        parts = (*fields, sample.output_logprobs, *sample.prompt_ids, *sample.output_ids)
        for obj in (*parts, *sample.output_logprobs):
            if id(obj) not in seen:
                seen.add(id(obj))
                total += sys.getsizeof(obj)
    return total


def box_payload(data: RolloutToScatter):
    return (data.samples, data.advantages, data.trainable)


def measure(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.spawn(_rank, args=(args.ranks, os.path.join(tmp, "rdzv"), args, out), nprocs=args.ranks)
        with open(out) as f:
            return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=4, help="gloo processes (= DP size)")
    parser.add_argument("--samples", type=int, default=256, help="samples in the measured step")
    parser.add_argument("--mean-tokens", type=int, default=8192)
    parser.add_argument("--max-tokens", type=int, default=20480)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-full-pickle",
        dest="full_pickle",
        action="store_false",
        help="skip pickling the 8192 full-scale samples one by one (about a minute)",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    result = {**measure(args), **full_scale(args)}
    mb = 2**20
    old_full = result["full_bytes_per_rank_broadcast"]
    print(
        f"{result['ranks']} gloo ranks (DP={result['ranks']}), {result['samples']} samples, "
        f"{result['tokens']} tokens; full scale: {FULL_SAMPLES} samples, DP={FULL_DP}, mean "
        f"{result['full_mean_tokens']:.0f} tokens, max {result['full_max_tokens']}"
    )
    print(f"{'':26} {'MiB/rank':>10} {'seconds':>9} {'full-scale MiB/rank':>20}")
    rows = [
        (
            "broadcast_object_list",
            result["broadcast_bytes_per_rank"],
            result["broadcast_seconds"],
            old_full,
        ),
        (
            "rollout_scatter",
            result["scatter_bytes_per_rank_max"],
            result["scatter_seconds"],
            result["full_bytes_per_rank_scatter"],
        ),
    ]
    for name, size, seconds, full in rows:
        full_text = "not run" if full is None else f"{full / mb:.1f}"
        print(f"{name:26} {size / mb:10.2f} {seconds:9.3f} {full_text:>20}")
    print(
        f"unpickled Samples held by each receiving rank: "
        f"{result['broadcast_object_bytes_per_rank'] / mb:.1f} MiB for {result['tokens']} tokens"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
