"""Run ``python -m checkpoints_convert`` as users do: a subprocess, under torchrun for several
ranks, one thread each."""

import os
import subprocess
import sys

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def convert(*args: str, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m checkpoints_convert ...``, under torchrun when ``nproc`` > 1."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    done = subprocess.run(
        [*launcher, "-m", "checkpoints_convert", *args],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done
