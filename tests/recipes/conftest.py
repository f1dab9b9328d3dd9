"""Fixtures of the launch tests."""

import os

import pytest

from tests.recipes.sbatch_support import SLURM_ARGS


@pytest.fixture
def sbatch_in_process(tmp_path, capsys, monkeypatch):
    """``(name, *arguments) -> script`` through ``recipes.cli.main`` with ``--dryrun`` (what it
    printed to stderr is left in ``.stderr``)."""
    import nemo_run.config

    from recipes import cli

    home = nemo_run.config.get_nemorun_home()
    nemo_run.config.set_nemorun_home(str(tmp_path / "nemo_home"))
    # NeMo-Run runs its packaging commands with invoke, which reads this process's stdin.
    stdin = open(os.devnull)
    monkeypatch.setattr("sys.stdin", stdin)
    for key in [k for k in os.environ if k.startswith("NCCL_") or k == "GLOO_SOCKET_IFNAME"]:
        monkeypatch.delenv(key)

    def dryrun(name: str, *arguments: str) -> str:
        capsys.readouterr()
        cli.main([name, *arguments, *SLURM_ARGS, "--job-dir", str(tmp_path / "jobs"), "--dryrun"])
        captured = capsys.readouterr()
        dryrun.stderr = captured.err
        assert captured.out.startswith("#!/bin/bash\n")
        return captured.out

    yield dryrun
    nemo_run.config.set_nemorun_home(home)
    stdin.close()
