"""The kit's single-GPU subset end to end on a CUDA machine: ``tools/gpu_check.py --subset
single-gpu`` runs the tiny demo in bf16, the op against Megatron's cross-entropy and the old
pass's memory, each in its own process, and every one passes. Marked ``gpu``: skipped, with
the reason printed, where no CUDA device exists."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "gpu_check.py"


def test_single_gpu_subset_passes_end_to_end(tmp_path):
    out = tmp_path / "kit.json"
    command = [sys.executable, str(SCRIPT), "--subset", "single-gpu", "--json", str(out)]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "work")], capture_output=True, text=True, timeout=1500
    )
    print(done.stdout)
    report = json.loads(out.read_text())
    statuses = {c["name"]: (c["status"], c["detail"]) for c in report["checks"]}
    assert set(statuses) == {"tiny_demo", "logprob_op", "old_pass_memory"}
    assert all(status == "passed" for status, _ in statuses.values()), statuses
    assert done.returncode == 0
    op = next(c for c in report["checks"] if c["name"] == "logprob_op")["figures"]
    assert op["op_peak_bytes"] > 0 and op["megatron_peak_bytes"] > 0  # CUDA peaks measured
