"""The container smoke's mechanisms, run here on CPU: the broadcast between two interpreters
through the weight-update group's code (gloo instead of NCCL; two processes of this venv, as the
image runs the trainer's python and sglang's), finding the NCCL the trainer's torch loaded, and
``pip check`` against the base image's own problems. What needs the image and two GPUs (NCCL
between torch builds, the preloaded library) is listed in the README's "Container" section."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tools import container_smoke, nccl_library, pip_check
from tools.smoke_collective import PAYLOAD, collective_problem, payload, preload_problem

ROOT = Path(__file__).resolve().parent.parent


def test_one_gloo_broadcast_reaches_the_other_interpreter_intact(capfd):
    assert collective_problem("gloo", sys.executable, timeout_s=30) is None
    assert "payload received intact" in capfd.readouterr().out  # printed by rank 1


def test_a_wrong_payload_is_reported_by_the_receiving_rank():
    sent = payload("cpu").clone()
    sent[PAYLOAD - 1] += 1.0  # one value of 4096
    problem = collective_problem("gloo", sys.executable, timeout_s=30, send=sent)
    assert problem is not None and "rank 1 exited 1" in problem
    assert "1 of 4096 values differ" in problem


def test_a_rank_that_never_joins_is_reported_within_the_timeout():
    start = time.monotonic()
    problem = collective_problem("gloo", "/bin/true", timeout_s=3)
    assert problem is not None and problem.startswith("collective (gloo): rank 0:")
    assert time.monotonic() - start < 20


def test_rank_one_runs_with_the_engines_environment_and_checks_the_preload(capfd):
    """Rank 1 starts with ``engine_environment``'s LD_PRELOAD (SGLANG_NCCL_LIBRARY; here a real
    library, libz, so the preload runs) and finds that file mapped in itself."""
    libz = nccl_library.loaded_library("libz.so.1")
    assert libz, "needs libz.so.1 in the loader cache"
    environ = dict(os.environ, SGLANG_NCCL_LIBRARY=libz)
    assert collective_problem("gloo", sys.executable, timeout_s=30, environ=environ) is None
    assert f"preloaded {libz}: payload received intact" in capfd.readouterr().out


def test_the_preload_must_be_mapped():
    maps = "7f00-7f01 r-xp 0 08:01 1 /opt/lib/libnccl.so.2.28.9\n7f04-7f05 rw-p 0 00:00 0 [heap]\n"
    assert "not mapped" in preload_problem(maps, "/elsewhere/libnccl.so.2", cuda_torch=False)
    assert preload_problem(maps, "/opt/lib/libnccl.so.2.28.9", cuda_torch=False) is None


def test_a_preloaded_library_is_where_global_symbol_lookup_finds_its_symbols():
    """With libz preloaded, zlibVersion resolves to libz (the loader's own answer, read by
    dlsym/dladdr in a fresh process); a symbol nobody defines resolves to nothing."""
    libz = nccl_library.loaded_library("libz.so.1")
    code = (
        "import sys; sys.path.insert(0, '.'); from tools.nccl_library import symbol_library; "
        "print(symbol_library('zlibVersion'), symbol_library('ncclGetVersion'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, LD_PRELOAD=libz),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    found, nccl = done.stdout.split()
    assert os.path.samefile(found, libz) and nccl == "None"


def test_a_rank_one_interpreter_that_is_missing_is_reported():
    problem = collective_problem("gloo", "/nonexistent/python", timeout_s=3)
    assert problem is not None and "rank 1 did not start" in problem


def test_the_mapped_library_is_the_one_the_loader_cache_names():
    """This process's libc, found in /proc/self/maps, is the loader cache's libc (an
    independent source), and soname matching takes versioned file names."""
    mapped = nccl_library.mapped_library(open("/proc/self/maps").read(), "libc.so.6")
    cached = nccl_library.cached_library(
        subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout, "libc.so.6"
    )
    assert mapped and cached and os.path.samefile(mapped, cached)
    maps = "7f00-7f01 r-xp 0 08:01 42 /usr/lib/aarch64-linux-gnu/libnccl.so.2.28.9\n"
    assert nccl_library.mapped_library(maps, "libnccl.so.2").endswith("libnccl.so.2.28.9")
    assert nccl_library.mapped_library(maps, "libnccl.so.20") is None
    cache = "\tlibnccl.so.2 (libc6,AArch64) => /usr/lib/aarch64-linux-gnu/libnccl.so.2\n"
    assert nccl_library.cached_library(cache, "libnccl.so.2").startswith("/usr/lib/aarch64")


def test_the_smoke_compares_the_preloaded_library_with_the_one_torch_loaded(tmp_path, monkeypatch):
    real = tmp_path / "libnccl.so.2.28.9"
    real.write_bytes(b"")
    link, other = tmp_path / "link" / "libnccl.so.2", tmp_path / "other.so.2"
    link.parent.mkdir()
    link.symlink_to(real)
    other.write_bytes(b"")
    monkeypatch.setattr(nccl_library, "trainer_nccl", lambda: str(real))
    assert container_smoke.nccl_library_problem({"SGLANG_NCCL_LIBRARY": str(link)}) is None
    assert "other.so.2" in container_smoke.nccl_library_problem({"SGLANG_NCCL_LIBRARY": str(other)})
    assert container_smoke.nccl_library_problem({}) is not None  # unset: the image sets it


@pytest.mark.parametrize("gpus", [0, 1])
def test_one_gpu_or_none_skips_the_nccl_collective(capfd, gpus):
    assert container_smoke.collective_check(gpus) is None
    assert f"collective: skipped ({gpus} GPU(s)" in capfd.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_one_nccl_broadcast_between_two_interpreters_on_two_gpus():
    assert collective_problem("nccl", sys.executable, timeout_s=120) is None


def _broken_distribution(site, name: str, needs: str) -> None:
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
                                   f"Requires-Dist: {needs}\n")  # fmt: skip


def test_pip_check_fails_only_on_problems_the_base_did_not_have(tmp_path, monkeypatch):
    site = tmp_path / "site"
    monkeypatch.setenv("PYTHONPATH", str(site))
    _broken_distribution(site, "base-image-pkg", "not-installed-a")
    baseline = tmp_path / "base.txt"
    pip_check.main(["--save", str(baseline)])
    assert "base-image-pkg 1.0 requires not-installed-a" in baseline.read_text()
    pip_check.main(["--against", str(baseline)])  # the base's own problem: listed, no failure
    _broken_distribution(site, "ours", "not-installed-b>=2")
    with pytest.raises(SystemExit, match="1 broken requirement"):
        pip_check.main(["--against", str(baseline)])
