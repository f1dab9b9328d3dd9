"""``python -m checkpoints_convert {hf-to-mcore,mcore-to-hf} ...`` (also the
``checkpoints_convert`` console script); under ``torchrun --nproc_per_node=TP*PP`` for a
parallel layout. Prints a progress bar (rank 0) and every rank's peak RSS at the end. A bad
input exits with status 2 and one line naming the problem; nothing is left under ``--out``.
"""

import argparse
import os
import re
import resource
import sys

from checkpoints_convert.checks import check_world_size

# torch, Megatron-Core and the converters are imported once the arguments are read, so --help
# and a bad launch answer at once.

USER_ERRORS = (ValueError, OSError)
"""Bad input, a missing file, a full disk: one line, exit status 2."""
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20}
_UNITS["GIB"] = 2**30


def parse_size(text: str) -> int:
    """'2GB', '500MiB', '1048576' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 2GB, 500MiB, 1048576)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="checkpoints_convert", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    to_mcore = commands.add_parser("hf-to-mcore", help="Hugging Face folder -> Megatron checkpoint")
    to_mcore.add_argument("--hf", required=True, help="Hugging Face Qwen3 folder")
    to_mcore.add_argument("--tp", type=int, default=1, help="tensor parallel size of the output")
    to_mcore.add_argument("--pp", type=int, default=1, help="pipeline parallel size of the output")
    to_mcore.add_argument(
        "--vocab-multiple", type=int, default=128, help="pad the vocabulary to this times TP"
    )
    to_hf = commands.add_parser("mcore-to-hf", help="Megatron checkpoint -> Hugging Face folder")
    to_hf.add_argument("--mcore", required=True, help="a converted or trainer checkpoint")
    to_hf.add_argument("--tp", type=int, default=None, help="layout to load at (default 1)")
    to_hf.add_argument("--pp", type=int, default=None, help="default: the number of processes")
    to_hf.add_argument(
        "--hf-metadata",
        default=None,
        help="folder with config.json and tokenizer files (default: the checkpoint's hf/)",
    )
    to_hf.add_argument(
        "--max-shard-size", type=parse_size, default="2GiB", help="largest safetensors shard"
    )
    for command in (to_mcore, to_hf):
        command.add_argument("--out", required=True, help="output folder (must not exist)")
        command.add_argument("--force", action="store_true", help="replace an existing --out")
    return parser


def _layout(args, world_size: int) -> tuple[int, int, int]:
    """(TP, PP, vocabulary multiple) of the model the ranks build, checked against the launch."""
    if args.command == "hf-to-mcore":
        tp, pp, multiple = args.tp, args.pp, args.vocab_multiple
    else:  # loading layout: by default every process is a pipeline stage
        tp = 1 if args.tp is None else args.tp
        pp = max(1, world_size // max(tp, 1)) if args.pp is None else args.pp
        multiple = 128
    if multiple < 1:
        raise ValueError(f"--vocab-multiple must be >= 1, got {multiple}")
    check_world_size(world_size, tp, pp)
    return tp, pp, multiple


def _convert(args, parallel, progress):
    from checkpoints_convert.hf_to_mcore import convert_hf_to_mcore
    from checkpoints_convert.mcore_to_hf import convert_mcore_to_hf

    hooks = dict(force=args.force, on_start=progress.start, on_param=progress.advance)
    if args.command == "hf-to-mcore":
        return convert_hf_to_mcore(args.hf, args.out, parallel, **hooks)
    return convert_mcore_to_hf(
        args.mcore, args.out, parallel, hf_metadata=args.hf_metadata,
        max_shard_bytes=args.max_shard_size, **hooks,
    )  # fmt: skip


def peak_rss() -> int:
    """This process's peak resident memory in bytes: Linux's VmHWM (of this program alone;
    ``ru_maxrss`` carries over a parent's peak across exec), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def peak_rss_per_rank() -> list[int]:
    """Collective: every rank's peak resident memory in bytes."""
    import torch.distributed as dist

    mine = peak_rss()
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return gathered


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        tp, pp, multiple = _layout(args, int(os.environ.get("WORLD_SIZE", "1")))
        import torch.distributed as dist

        from checkpoints_convert.progress import ConversionProgress
        from megatron_fork.trainer.actor import init_parallel, shutdown_parallel
        from megatron_fork.trainer.trainer_config import ParallelConfig

        parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp, vocab_multiple=multiple)
        init_parallel(parallel, seed=0)
        try:
            rank0 = dist.get_rank() == 0
            with ConversionProgress(args.command, enabled=rank0) as progress:
                out = _convert(args, parallel, progress)
            peaks = peak_rss_per_rank()
            if rank0:
                mib = ", ".join(f"{p / 2**20:.0f}" for p in peaks)
                print(f"wrote {out}; peak RSS per rank (MiB): {mib}", flush=True)
        finally:
            shutdown_parallel()
    except USER_ERRORS as error:
        print(f"checkpoints_convert: error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0
