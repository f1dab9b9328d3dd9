"""Reading and running the sbatch scripts ``python -m recipes ... --dryrun`` prints.

The ``sbatch_in_process`` fixture (``conftest.py``) runs the CLI in this interpreter (the recipe
checks and NeMo-Run are imported once per session, so a dry run takes a fraction of a second).
``run_with_stubs`` runs a script with real bash, as the batch step would, with ``srun``,
``scontrol`` and ``sleep`` replaced by stubs that record each srun's arguments and environment:
what bash makes of the script's quoting, not what a parser in this file thinks it makes."""

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SLURM_ARGS = ["--executor", "slurm", "--account", "acct", "--partition", "batch"]
SLURM_ARGS += ["--container-image", "/lustre/img/mf.sqsh"]
MOUNTS = ["/lustre/ckpt:/checkpoints", "/lustre/results:/results", "/lustre/data:/data"]
for _mount in MOUNTS:
    SLURM_ARGS += ["--mount", _mount]
SRUN_FLAGS = {"exclusive", "label", "container-writable", "no-container-mount-home"}
"""srun options without a value."""


def groups(script: str) -> list[dict[str, str]]:
    """The #SBATCH options of each node group of a (heterogeneous) job."""
    found = [{}]
    for line in script.splitlines():
        if line == "#SBATCH hetjob":
            found.append({})
        elif line.startswith("#SBATCH --"):
            key, _, value = line.removeprefix("#SBATCH --").partition("=")
            found[-1][key] = value
    return found


def parse_srun(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """srun's own options (``key -> value``) and the command it runs."""
    options, index = {}, 0
    while words[index].startswith("--"):
        key, _, value = words[index][2:].partition("=")
        if not value and key not in SRUN_FLAGS:
            index, value = index + 1, words[index + 1]
        options[key] = value
        index += 1
    return options, words[index:]


def sruns(script: str) -> dict[int, tuple[dict[str, str], list[str]]]:
    """het group -> (srun options, the command it runs), read with ``shlex.split``."""
    runs = {}
    for line in script.splitlines():
        if line.startswith("srun "):
            options, command = parse_srun(shlex.split(line.split(" & pids")[0])[1:])
            runs[int(options.get("het-group", 0))] = (options, command)
    return runs


@dataclass
class ScriptRun:
    returncode: int
    output: str
    """Everything the script printed (``set -x`` traces included)."""
    calls: dict[int, tuple[list[str], dict[str, str]]]
    """het group -> (srun's arguments, srun's environment)."""


SRUN_STUB = """#!/bin/bash
case " $* " in *" --ip-address "*) echo 10.0.0.1; exit 0;; esac
group=0
for word in "$@"; do case "$word" in --het-group=*) group=${word#--het-group=};; esac; done
printf '%s\\0' "$@" > "$STUB_OUT/srun-$group.args"
env -0 > "$STUB_OUT/srun-$group.env"
"""
SCONTROL_STUB = """#!/bin/bash
if [ "$1" = show ]; then
    list=${2#hostnames}; list=${list#=}; [ -n "$list" ] || list=$3
    tr , '\\n' <<< "$list"
else
    echo "$*" >> "$STUB_OUT/scontrol"
fi
"""

SLEEP_STUB = """#!/bin/bash
# The script's 30 s and 60 s waits: only until the srun stubs it started have finished, so
# the monitor loop never kills one half-way.
while pgrep -P "$PPID" -f "/stubs/srun " > /dev/null; do {sleep} 0.05; done
"""


def _stubs(folder: Path) -> None:
    folder.mkdir()
    sleep = shutil.which("sleep")
    for name, text in [
        ("srun", SRUN_STUB),
        ("scontrol", SCONTROL_STUB),
        ("sleep", SLEEP_STUB.format(sleep=sleep)),
    ]:
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)


def run_with_stubs(script: str, tmp_path: Path, environ: dict[str, str]) -> ScriptRun:
    """Run ``script`` as job 4242 on trainer node t1 and engine node e1 (files in ``tmp_path``)."""
    out, stubs = tmp_path / "stub_out", tmp_path / "stubs"
    out.mkdir(parents=True)
    _stubs(stubs)
    (tmp_path / "job.sbatch").write_text(script)
    env = {
        "PATH": f"{stubs}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "STUB_OUT": str(out),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "t1,e1",
        "SLURM_JOB_NODELIST_HET_GROUP_0": "t1",
        "SLURM_JOB_NODELIST_HET_GROUP_1": "e1",
        **environ,
    }
    done = subprocess.run(
        ["bash", str(tmp_path / "job.sbatch")], env=env, capture_output=True, text=True, timeout=60
    )
    calls = {}
    for args in out.glob("srun-*.args"):
        group = int(args.stem.removeprefix("srun-"))
        environ_text = args.with_suffix(".env").read_text()
        pairs = (item.split("=", 1) for item in environ_text.split("\0") if "=" in item)
        calls[group] = (args.read_text().split("\0")[:-1], dict(pairs))
    return ScriptRun(done.returncode, done.stdout + done.stderr, calls)
