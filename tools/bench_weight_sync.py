"""Weight sync throughput: the trainer's rank 0 pushing a model to rollout servers.

Starts CPU rollout servers (their own processes, ``--load-format dummy``), then times full
syncs through ``ServerRolloutEngine.update_weights`` (pause, flush, per bucket: announce over
HTTP + gloo broadcast by its one ``StageSender``, version) for each bucket size, against a
plain in-process tensor copy of the same bytes measured in the same run. Prints GB/s and the
ratio. A pipeline-parallel trainer sends each stage the same way from its own leader, stage
after stage, so a sync takes about the sum of its stages' times.

Usage:  .venv/bin/python tools/bench_weight_sync.py [--hidden 1024] [--layers 8]
        [--vocab 32000] [--servers 2] [--bucket-mb 16 64 512] [--repeats 2]
"""

import argparse
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from megatron_fork.models.hf_mapping import size_bounded_buckets
from megatron_fork.rollout.server_engine import ServerRolloutEngine
from megatron_fork.rollout.server_pool import ServerPool, cpu_server_command

GB = 1e9


def _model(hidden: int, layers: int, vocab: int) -> Qwen3ForCausalLM:
    config = Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
        head_dim=hidden // 8, tie_word_embeddings=False,
    )  # fmt: skip
    return Qwen3ForCausalLM(config)


def _copy_seconds(named: list, repeats: int) -> float:
    targets = [torch.empty_like(t) for _, t in named]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for target, (_, tensor) in zip(targets, named, strict=True):
            target.copy_(tensor)
        best = min(best, time.perf_counter() - start)
    return best


def _sync_seconds(engine, named: list, bucket_bytes: int, version: int) -> float:
    start = time.perf_counter()
    for bucket in size_bounded_buckets(named, bucket_bytes):
        engine.update_weights(bucket)
    engine.update_weights([], version=version)
    return time.perf_counter() - start


def _report(mode: str, bucket_mb: int, seconds: float, nbytes: int, copy_s: float) -> None:
    rate = nbytes / seconds / GB
    print(f"{mode:>10}, bucket {bucket_mb:>4} MiB: sync {seconds:.3f} s = {rate:.2f} GB/s "
          f"({copy_s / seconds:.3f}x the plain copy)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--bucket-mb", type=int, nargs="+", default=[16, 64, 512])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = _model(args.hidden, args.layers, args.vocab)
    named = [(n, t.detach()) for n, t in model.state_dict().items()]
    nbytes = sum(t.numel() * t.element_size() for _, t in named)
    copy_s = _copy_seconds(named, args.repeats)
    print(f"model {nbytes / GB:.2f} GB fp32, {args.servers} CPU servers (gloo, loopback)")
    print(f"plain tensor copy: {copy_s:.3f} s = {nbytes / copy_s / GB:.2f} GB/s")
    with TemporaryDirectory() as tmp:
        model.config.save_pretrained(Path(tmp))
        command = cpu_server_command(tmp, load_format="dummy")
        with ServerPool([command] * args.servers) as pool:
            engine = ServerRolloutEngine(pool.urls, pool)
            _sync_seconds(engine, named, 64 << 20, version=1)  # warm-up: forms the group
            version = 1
            for flattened in (False, True):
                engine.flattened_buckets = flattened
                for mb in args.bucket_mb:
                    best = float("inf")
                    for _ in range(args.repeats):
                        version += 1
                        best = min(best, _sync_seconds(engine, named, mb << 20, version))
                    _report("flattened" if flattened else "per tensor", mb, best, nbytes, copy_s)


if __name__ == "__main__":
    main()
