"""The bring-up kit's command line (tools/gpu_check.py): argument handling, the skip rules, the
table and the JSON file, and the runner: a check that crashes, raises or hangs in its own
process is reported failed with its reason, and a hung check's children are stopped too."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tools import gpu_check
from tools.gpu_checks import machine as machine_module
from tools.gpu_checks import registry, runner
from tools.gpu_checks.core import FAILED, PASSED, SKIPPED, CheckContext, CheckResult, Needs, Part
from tools.gpu_checks.machine import Machine, auto_subset, skip_reason
from tools.gpu_checks.report import as_json, exit_status, table

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu_check.py"
EXPECTED = ["tiny_demo", "logprob_op", "old_pass_memory", "qwen3_8b", "qwen3_14b", "qwen3_32b"]
EXPECTED += ["vllm_engine", "colocated_1node"]
NO_GPU = Machine(gpus=0, transformer_engine=False, sglang_python=None)
FIXTURES = "tests.tools.kit_fixture_checks"


def _cli(*args, timeout=60):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
    )


def _fixture(name: str, timeout_s: float = 60.0, **kwargs) -> registry.Check:
    return registry.Check(
        name, "fixture", Needs(gpus=0), registry.SINGLE_GPU, f"{FIXTURES}:{name}", timeout_s, kwargs
    )


def test_list_names_every_check_with_its_needs_without_importing_torch():
    done = _cli("--list")
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines() if not line.startswith(" ")]
    assert listed == EXPECTED == registry.check_names()
    assert "needs CUDA, 8 GPUs, Transformer Engine, sglang" in done.stdout
    probe = (
        "import sys; from tools import gpu_check; gpu_check._list(); print('torch' in sys.modules)"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT
    )
    assert imported.stdout.strip().endswith("False")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "logprob_op", "nope"], "unknown check(s) nope: choose from tiny_demo, "),
        (["--subset", "everything"], "argument --subset: invalid choice: 'everything'"),
        (["--timeout-s", "0"], "argument --timeout-s: must be > 0"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    done = _cli(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: error: ") and message in lines[0]
    if args[0] == "--only":
        assert all(name in lines[0] for name in EXPECTED)


@pytest.mark.parametrize("subset", ["single-gpu", "node", "auto"])
def test_without_cuda_every_check_is_skipped_with_its_reason_and_exit_0(
    subset, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(machine_module, "probe", lambda: NO_GPU)
    out = tmp_path / "kit.json"
    assert gpu_check.main(["--subset", subset, "--json", str(out), "--out", str(tmp_path)]) == 0
    report = json.loads(out.read_text())
    names = [c["name"] for c in report["checks"]]
    assert names == (EXPECTED if subset == "node" else EXPECTED[:3])  # auto: no stack -> single
    assert report["subset"] == ("node" if subset == "node" else "single-gpu")
    for check in report["checks"]:
        assert check["status"] == SKIPPED
        assert check["detail"].startswith("skipped: needs CUDA (no CUDA device)")
    node_rows = [c["detail"] for c in report["checks"] if c["name"].startswith("qwen3")]
    assert all("Transformer Engine" in d and "sglang" in d for d in node_rows)
    assert report["exit_status"] == 0 and report["machine"]["gpus"] == 0
    assert "(nothing ran on this machine)" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_the_real_probe_on_this_machine_skips_everything(tmp_path):
    done = _cli("--subset", "single-gpu", "--out", str(tmp_path), "--json", str(tmp_path / "k"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("SKIP") == 3 and "needs CUDA (no CUDA device)" in done.stdout


def test_skip_reasons_name_each_missing_need():
    node = Needs(gpus=8, transformer_engine=True, sglang=True)
    reason = skip_reason(node, Machine(gpus=4, transformer_engine=False, sglang_python=None))
    assert reason.startswith("needs 8 GPUs (this machine has 4); Transformer Engine")
    assert "sglang (not importable by" in reason and "SGLANG_PYTHON" in reason
    full = Machine(gpus=8, transformer_engine=True, sglang_python="/opt/sglang/bin/python")
    assert skip_reason(node, full) is None
    assert skip_reason(Needs(gpus=1), Machine(1, False, None)) is None
    assert auto_subset(full) == "node" and auto_subset(Machine(1, False, None)) == "single-gpu"
    assert auto_subset(Machine(8, True, None)) == "single-gpu"


def test_table_and_json_of_every_status():
    results = {
        "good": CheckResult(PASSED, "all fine", {"ratio": 0.5}, seconds=12.4),
        "bad": CheckResult(
            FAILED,
            "convert: exit status 1",
            {"x": float("inf")},
            (Part("convert", FAILED, "exit status 1"), Part("train", SKIPPED, "not run")),
            3.0,
        ),
        "absent": CheckResult(SKIPPED, "skipped: needs CUDA (no CUDA device)"),
    }
    lines = table(results).splitlines()
    assert lines[0].split() == ["check", "status", "time", "detail"]
    assert lines[1].split()[:3] == ["good", "PASS", "12s"] and lines[1].endswith("all fine")
    assert lines[2].split()[:3] == ["bad", "FAIL", "3s"]
    assert lines[3].split()[:3] == ["convert", "FAIL", "-"] and lines[3].startswith("  convert")
    assert lines[4].split()[:2] == ["train", "SKIP"]
    assert lines[5].split()[:3] == ["absent", "SKIP", "-"]
    assert lines[6] == "1 passed, 1 failed, 1 skipped"
    assert exit_status(results) == 1 and exit_status({"a": results["good"]}) == 0
    data = json.loads(json.dumps(as_json(results, {"subset": "node"})))  # standard JSON
    assert data["exit_status"] == 1 and data["subset"] == "node"
    bad = data["checks"][1]
    assert bad["name"] == "bad" and bad["figures"] == {"x": "inf"}
    assert bad["parts"][1] == {"name": "train", "status": SKIPPED, "detail": "not run"}
    assert CheckResult.from_dict(data["checks"][0]) == results["good"]


def _run_fixture(tmp_path, name, timeout_s=60.0, **kwargs) -> CheckResult:
    ctx = CheckContext(tmp_path / name, timeout_s, 0.2)
    return runner.run_in_subprocess(_fixture(name, timeout_s, **kwargs), ctx, tmp_path / "log")


def test_a_passing_check_returns_its_figures_through_the_worker(tmp_path):
    result = _run_fixture(tmp_path, "passes", value=2.5)
    assert result.status == PASSED and result.detail == "fine"
    assert result.figures == {"value": 2.5, "not_finite": "nan"} and result.seconds > 0


def test_a_crashing_check_is_failed_with_its_last_log_line(tmp_path):
    result = _run_fixture(tmp_path, "crashes")
    assert result.status == FAILED
    assert result.detail.startswith("crashed (exit status 3): boom: the check died without")


def test_an_exception_in_a_check_is_failed_with_its_message(tmp_path):
    result = _run_fixture(tmp_path, "raises")
    assert (result.status, result.detail) == (FAILED, "RuntimeError: the real reason")
    assert "Traceback" in (tmp_path / "log").read_text()


def test_a_failed_step_fails_the_check_and_the_rest_are_not_run(tmp_path):
    result = _run_fixture(tmp_path, "fails_in_second_step")
    assert result.status == FAILED and result.detail.startswith("second: ZeroDivisionError")
    assert [(p.name, p.status) for p in result.parts] == [
        ("first", PASSED),
        ("second", FAILED),
        ("third", SKIPPED),
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split(") ")[1].startswith("Z"))


@pytest.mark.parametrize("name", ["hangs_with_child", "hangs_with_engine"])
def test_a_hung_check_times_out_and_its_children_are_stopped(tmp_path, name):
    """A child in the worker's group (a trainer) is reached by the runner's signals; one in a
    session of its own (an engine) by the check's ``finally``, which SIGTERM runs."""
    start = time.monotonic()
    result = _run_fixture(tmp_path, name, timeout_s=3.0)
    assert result.status == FAILED and result.detail.startswith("timed out after 3 s")
    assert time.monotonic() - start < 20  # SIGTERM reached it: no grace period spent
    child = int((tmp_path / name / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(child)
    if alive:  # do not leave it behind for the next tests
        os.kill(child, 9)
    assert not alive, "the check's child outlived the time limit"


def test_a_check_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "GRACE_S", 1.0)
    result = _run_fixture(tmp_path, "ignores_sigterm", timeout_s=2.0)
    assert result.status == FAILED and result.detail.startswith("timed out after 2 s")


def test_the_table_keeps_going_past_a_crash_and_a_hang(tmp_path, monkeypatch, capsys):
    checks = [_fixture("passes"), _fixture("crashes"), _fixture("hangs")]
    monkeypatch.setattr(registry, "all_checks", lambda: checks)
    monkeypatch.setattr(machine_module, "probe", lambda: NO_GPU)
    out = tmp_path / "kit.json"
    argv = ["--only", "passes", "crashes", "hangs", "--timeout-s", "3", "--json", str(out)]
    assert gpu_check.main([*argv, "--out", str(tmp_path)]) == 1
    statuses = {
        c["name"]: (c["status"], c["detail"]) for c in json.loads(out.read_text())["checks"]
    }
    assert statuses["passes"] == (PASSED, "fine")
    assert statuses["crashes"][0] == FAILED and "crashed (exit status 3)" in statuses["crashes"][1]
    assert statuses["hangs"][0] == FAILED and "timed out after 3 s" in statuses["hangs"][1]
    assert "1 passed, 2 failed, 0 skipped" in capsys.readouterr().out


def test_a_failed_runs_reason_is_its_error_line_not_the_launchers_banner(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "[rank0]: Traceback (most recent call last):\n"
        "[rank0]: TypeError: Wrapped parameters must be one of torch.cuda.FloatTensor\n"
        "E1206 04:11:37 .venv/lib/python3.11/site-packages/torch/distributed/elastic/"
        "multiprocessing/api.py:1002] failed (exitcode: 1) local_rank: 0\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "============================================================\n"
        "recipes.train FAILED\n"
        "============================================================\n"
    )
    assert runner.last_line(log) == (
        "[rank0]: TypeError: Wrapped parameters must be one of torch.cuda.FloatTensor"
    )
    log.write_text("starting\nsomething odd happened\n")
    assert runner.last_line(log) == "something odd happened"
    assert runner.last_line(tmp_path / "absent.log") == "(no log)"
