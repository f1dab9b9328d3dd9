"""A real submission (no ``--dryrun``) through NeMo-Run, with ``sbatch``, ``squeue`` and
``sacct`` stubs on PATH: ``sbatch`` is handed a script that exists, whose log folder and
``/nemo_run`` mount exist, with the code ``--packager git`` shipped (HEAD of a clean checkout)
unpacked where the container's working directory is, and user values intact."""

import os
import subprocess
import sys

from tests.recipes.sbatch_support import sruns

SBATCH_STUB = """#!/bin/bash
script="${@: -1}"
[ -f "$script" ] || { echo "sbatch: error: Unable to open file $script" >&2; exit 1; }
echo "$script" > "$STUB_OUT/submitted"
echo 4242
"""


def _stub_bin(folder):
    folder.mkdir()
    for name, text in [
        ("sbatch", SBATCH_STUB),
        ("squeue", "#!/bin/bash\n"),
        ("sacct", "#!/bin/bash\n"),
    ]:
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)


def _checkout(folder):
    folder.mkdir()
    (folder / "train.py").write_text("print('shipped')\n")
    for command in (["init", "-q"], ["add", "train.py"], ["commit", "-qm", "one"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *command], cwd=folder, check=True
        )


def test_submission_hands_sbatch_a_complete_job(tmp_path):
    _stub_bin(tmp_path / "bin")
    _checkout(tmp_path / "checkout")
    image = tmp_path / "images" / "megatron-fork.sqsh"
    image.parent.mkdir()
    image.write_bytes(b"hsqs")
    override = "output_dir=/lustre/runs/q8b (top 20%) 'a' $HOME"
    command = [sys.executable, "-m", "recipes", "qwen3_8b", "--executor", "slurm"]
    command += ["--account", "acct", "--container-image", str(image), "--mount", "/lustre:/lustre"]
    command += ["--job-dir", str(tmp_path / "jobs"), "--packager", "git", override]
    command += [f"{k}=/lustre/x" for k in ("base_model", "data.train", "data.eval")]
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "STUB_OUT": str(tmp_path),
        "NEMORUN_HOME": str(tmp_path / "nemo_home"),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        command, cwd=tmp_path / "checkout", env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    submitted = (tmp_path / "submitted").read_text().strip()
    assert submitted.startswith(str(tmp_path / "jobs" / "experiments"))
    experiment_folder = tmp_path / "jobs" / "experiments" / "qwen3_8b"
    assert experiment_folder.stat().st_mode & 0o077 == 0  # logs hold the engines' API key
    script = open(submitted).read()
    assert subprocess.run(["bash", "-n", submitted]).returncode == 0
    for options, command_words in sruns(script).values():
        assert command_words[-4] == override  # the overrides follow the recipe name
        job_folder, _, inside = options["container-mounts"].split(",")[-1].partition(":")
        assert inside == "/nemo_run" and os.path.isdir(os.path.dirname(options["output"]))
        code = os.path.join(job_folder, "code", "train.py")
        assert open(code).read() == "print('shipped')\n"  # /nemo_run/code, the working dir
