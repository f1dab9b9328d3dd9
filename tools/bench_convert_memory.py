"""Peak memory of checkpoint conversion: does a rank hold its shard, or the whole model?

Writes a random Hugging Face Qwen3 (default ~0.64 GB in fp32) and converts it with the real
command line, hf-to-mcore and mcore-to-hf, on 1 process and on 2 (PP=2, torchrun), reading the
peak RSS every rank prints. A tiny model converted the same way gives the baseline (Python,
torch and Megatron-Core imported, process group up). "extra" = peak - baseline, set beside the
model's bytes and a rank's share of them: a streaming conversion's extra stays near its share
(plus one full parameter and, for mcore-to-hf, one output shard); loading the whole HF state
dict as well would show ~2x the model.

Usage:  .venv/bin/python tools/bench_convert_memory.py [--hidden 1024] [--layers 8]
        [--vocab 32000] [--max-shard-size 200MB] [--workdir runs/bench_convert]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

MIB = 2**20
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _qwen3(hidden: int, layers: int, vocab: int) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
        head_dim=hidden // 8, tie_word_embeddings=False,
    )  # fmt: skip


def _write_model(directory: Path, config: Qwen3Config, max_shard: str) -> int:
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    model.save_pretrained(directory, max_shard_size=max_shard)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _convert(args: list[str], nproc: int) -> list[float]:
    """Run the CLI; every rank's peak RSS in MiB, as it prints them."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command = [*launcher, "-m", "checkpoints_convert", *args, "--force"]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    match = re.search(r"peak RSS per rank \(MiB\): ([\d, ]+)", done.stdout)
    return [float(x) for x in match.group(1).split(",")]


def _round_trip(hf: Path, work: Path, nproc: int, max_shard: str) -> dict[str, list[float]]:
    layout = ["--pp", str(nproc)]
    return {
        "hf-to-mcore": _convert(
            ["hf-to-mcore", "--hf", str(hf), "--out", str(work / "mcore"), *layout], nproc
        ),
        "mcore-to-hf": _convert(
            [
                "mcore-to-hf",
                "--mcore",
                str(work / "mcore"),
                "--out",
                str(work / "back"),
                *layout,
                "--max-shard-size",
                max_shard,
            ],
            nproc,
        ),  # fmt: skip
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--max-shard-size", default="200MB")
    parser.add_argument("--workdir", default="runs/bench_convert")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    _write_model(work / "tiny", _qwen3(64, 2, 512), args.max_shard_size)
    model_bytes = _write_model(
        work / "hf", _qwen3(args.hidden, args.layers, args.vocab), args.max_shard_size
    )
    print(f"model: {model_bytes / MIB:.0f} MiB fp32 ({args.layers} layers, hidden {args.hidden}, "
          f"vocab {args.vocab}); output shards <= {args.max_shard_size}")  # fmt: skip
    print(f"{'procs':>5} {'command':<12} {'rank':>4} {'peak MiB':>9} {'base MiB':>9} "
          f"{'extra MiB':>9} {'share MiB':>9} {'extra/share':>11} {'extra/model':>11}")  # fmt: skip
    for nproc in (1, 2):
        baseline = _round_trip(work / "tiny", work / f"tiny_{nproc}", nproc, args.max_shard_size)
        measured = _round_trip(work / "hf", work / f"run_{nproc}", nproc, args.max_shard_size)
        share = model_bytes / nproc / MIB
        for command, peaks in measured.items():
            for rank, peak in enumerate(peaks):
                base = baseline[command][rank]
                extra = peak - base
                print(f"{nproc:>5} {command:<12} {rank:>4} {peak:>9.0f} {base:>9.0f} "
                      f"{extra:>9.0f} {share:>9.0f} {extra / share:>11.2f} "
                      f"{extra / (model_bytes / MIB):>11.2f}")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
