"""One check in this process (started by ``runner``, never by hand):

    python -m tools.gpu_checks.worker --target MODULE:FUNCTION --kwargs JSON --work DIR
        --result FILE --timeout-s S --max-logprob-diff D

Writes the check's ``CheckResult`` as JSON to ``--result`` (whole or not at all). An exception
in the check is a failed result with its one-line message (the traceback goes to the log); a
crash that leaves no result is reported by the runner. SIGTERM (the runner's time limit) is
turned into SystemExit, so a check's ``finally`` blocks stop the engines and trainers it
started before the runner's SIGKILL.
"""

import argparse
import importlib
import json
import signal
import sys
import traceback
from pathlib import Path

from tools.gpu_checks.core import FAILED, CheckContext, CheckFailed, CheckResult, one_line


def resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run_check(target: str, ctx: CheckContext, kwargs: dict) -> CheckResult:
    try:
        return resolve(target)(ctx, **kwargs)
    except CheckFailed as failure:
        return CheckResult(FAILED, str(failure))
    except Exception as error:  # the check's bug or the stack's: reported, not raised
        traceback.print_exc()
        return CheckResult(FAILED, one_line(error))


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_checks.worker")
    parser.add_argument("--target", required=True)
    parser.add_argument("--kwargs", default="{}")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--timeout-s", type=float, required=True)
    parser.add_argument("--max-logprob-diff", type=float, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args.work.mkdir(parents=True, exist_ok=True)
    ctx = CheckContext(args.work, args.timeout_s, args.max_logprob_diff)
    result = run_check(args.target, ctx, json.loads(args.kwargs))
    tmp = args.result.with_name(args.result.name + ".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2))
    tmp.replace(args.result)
    print(f"result: {result.status}: {result.detail}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
