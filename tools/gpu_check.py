"""The bring-up kit: what to run on a new cluster before the 64-node job.

    python tools/gpu_check.py                      # what this machine can run (--subset auto)
    python tools/gpu_check.py --subset single-gpu  # one GPU, torch + megatron-core only
    python tools/gpu_check.py --subset node --json kit.json   # one 8-GPU node in the container
    python tools/gpu_check.py --only logprob_op qwen3_32b --out /scratch/kit --timeout-s 600
    python tools/gpu_check.py --list

On one GPU with torch and megatron-core (no Transformer Engine, no sglang): the tiny demo on
CUDA in bf16, the log-prob/entropy op against Megatron's vocab_parallel_cross_entropy (time and
peak memory), the old-logprob pass's memory with autograd on and off. On one 8-GPU node inside
the container, also each Qwen3 recipe with few layers at its TP/CP/PP (cut to fit the node
beside one sglang engine: tools/gpu_checks/kit_layout.py) with FP8: a checkpoint converted on
the CPU, two RL steps against the engine, save and resume with the distributed optimizer, the
PP=2 weight sync over NCCL, the engine log-prob difference. Each check runs in its own process
with a time limit; a check whose needs (CUDA, GPUs, Transformer Engine, sglang via
SGLANG_PYTHON) are missing is skipped with the reason.

Exit status: 0 when every check that ran passed (skipped checks do not count), 1 when one
failed, 2 for bad arguments.
"""

import argparse
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``tools.gpu_checks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.gpu_checks.core import SKIPPED, CheckContext, CheckResult  # noqa: E402
from tools.gpu_checks.registry import SUBSETS, all_checks, select  # noqa: E402

DEFAULT_MAX_LOGPROB_DIFF = 0.2
"""nats. A sync that missed a stage leaves the engine's layers at sglang's dummy weights, which
puts the kit models' engine log-probs about 1 nat off; FP8 training against a bf16 engine on a
random model is expected at a few hundredths (an estimate: tune it on the first run)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2, as the project's other CLIs
        print(f"gpu_check: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tools/gpu_check.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--subset",
        choices=SUBSETS,
        default="auto",
        help="single-gpu, node (every check), or auto (default): node where CUDA, Transformer "
        "Engine and sglang are here, else single-gpu",
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these checks only")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    parser.add_argument("--out", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument(
        "--timeout-s", type=_positive, help="each check's time limit (default: its own)"
    )
    parser.add_argument(
        "--max-logprob-diff",
        type=_positive,
        default=DEFAULT_MAX_LOGPROB_DIFF,
        metavar="NATS",
        help="largest train/engine_logprob_abs_diff a node check's steps may log (default "
        f"{DEFAULT_MAX_LOGPROB_DIFF})",
    )
    return parser


def _list() -> None:
    for check in all_checks():
        print(f"{check.name:<16} [{check.subset}; needs {check.needs.describe()}]")
        print(f"{'':<16} {check.summary}")


def _run(checks, machine, args, work: Path) -> dict[str, CheckResult]:
    from tools.gpu_checks.machine import skip_reason
    from tools.gpu_checks.runner import run_in_subprocess

    results = {}
    for check in checks:
        reason = skip_reason(check.needs, machine)
        if reason is not None:
            results[check.name] = CheckResult(SKIPPED, f"skipped: {reason}")
            continue
        timeout = args.timeout_s or check.timeout_s
        ctx = CheckContext(work / check.name, timeout, args.max_logprob_diff)
        print(f"running {check.name} (up to {timeout:.0f} s) ...", flush=True)
        results[check.name] = result = run_in_subprocess(check, ctx, work / f"{check.name}.log")
        print(f"  {result.status}: {result.detail}", flush=True)
    return results


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        _list()
        return 0
    subset = args.subset
    try:
        select(subset if subset != "auto" else "node", args.only)  # names checked first
    except ValueError as error:
        print(f"gpu_check: error: {error}", file=sys.stderr)
        return 2
    from tools.gpu_checks.machine import auto_subset, probe
    from tools.gpu_checks.report import exit_status, table, write_json

    machine = probe()
    subset = auto_subset(machine) if subset == "auto" else subset
    checks = select(subset, args.only)
    # Absolute: the checks' trainers and converters run in the checkout, not here.
    work = (args.out or Path(tempfile.mkdtemp(prefix="gpu_check_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine}; subset {subset}; work folder {work}", flush=True)
    results = _run(checks, machine, args, work)
    print(table(results))
    if args.json:
        needs = {c.name: c.needs.describe() for c in checks}
        meta = {"machine": machine.to_dict(), "subset": subset, "work": str(work), "needs": needs}
        write_json(args.json, results, meta)
    return exit_status(results)


if __name__ == "__main__":
    sys.exit(main())
