"""tools/bench_packing.py: a tiny run of the command line writes every figure, and its token
fractions are what the step's samples imply (closed form for the padded rows; the packed
micro-batches' own lengths for packing). No timing assertions: timings are the benchmark's
output, not its contract."""

import json
import math
import subprocess
import sys
from pathlib import Path

from tools.bench_packing import BenchSettings, response_lengths

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "bench_packing.py"
ROW_MULTIPLE = 8  # train_batch.SEQ_LEN_MULTIPLE: TP = CP = 1, no FP8
TINY = {
    "samples": 8,
    "max-prompt": 24,
    "max-response": 48,
    "micro-batch-size": 2,
    "budget": 100,  # the longest sample has at most 24 + 48 - 1 = 71 positions
    "hidden": 32,
    "layers": 1,
    "heads": 2,
    "kv-heads": 1,
    "head-dim": 16,
    "intermediate": 64,
    "vocab": 200,
    "repeats": 1,
}
KEYS = (
    "real_token_fraction_padded",
    "real_token_fraction_packed",
    "train_seconds_padded",
    "train_seconds_packed",
    "train_time_ratio",
    "torch_threads",
    "settings",
)


def test_lengths_are_long_tailed_with_a_third_of_the_maximum_as_mean():
    settings = BenchSettings(samples=4096)
    lengths = response_lengths(settings)
    mean = sum(lengths) / len(lengths)
    assert abs(mean / settings.max_response - 1 / 3) < 0.01
    assert 1 <= min(lengths) and max(lengths) == settings.max_response
    median = sorted(lengths)[len(lengths) // 2]
    assert median < 0.8 * mean  # a long tail: most responses are short


def test_tiny_run_writes_the_figures_the_layouts_imply(tmp_path):
    out = tmp_path / "bench.json"
    flags = [x for name, value in TINY.items() for x in (f"--{name}", str(value))]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *flags, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "packed / padded train time" in done.stdout
    result = json.loads(out.read_text())
    assert all(key in result for key in KEYS), sorted(result)
    assert result["settings"]["samples"] == TINY["samples"]

    positions = result["sample_positions"]  # prompt + response - 1 per sample
    assert len(positions) == TINY["samples"]
    real = sum(positions)
    row = math.ceil(max(positions) / ROW_MULTIPLE) * ROW_MULTIPLE
    padded = result["microbatch_tokens_padded"]
    assert padded == [TINY["micro-batch-size"] * row] * (
        TINY["samples"] // TINY["micro-batch-size"]
    )
    assert result["real_token_fraction_padded"] == real / (len(positions) * row)

    packed = result["microbatch_tokens_packed"]
    assert all(n % ROW_MULTIPLE == 0 and n <= TINY["budget"] for n in packed)
    # CP = 1: samples back to back, only each micro-batch's total rounded up to the multiple
    assert real <= sum(packed) < real + ROW_MULTIPLE * len(packed)
    assert result["real_token_fraction_packed"] == real / sum(packed)
    assert result["train_seconds_padded"] > 0 and result["train_seconds_packed"] > 0
    # the same samples from the same weights: the two layouts train the same loss
    assert math.isclose(result["loss_packed"], result["loss_padded"], rel_tol=1e-4, abs_tol=1e-6)
