"""The Slurm job asks for what it needs on a real site, and the options users reach for work:
the container image must be one pyxis can start; both node groups get all of a node's memory,
unbound CPUs, a writable container without the home directory, no user site-packages and
job-local caches (also where the image sets its own values); qos/reservation/constraint/memory,
the GPU request form and the job name reach both groups; logs are labelled by rank; the
rendezvous waits long enough for every node; the submitting shell's NCCL settings travel."""

import subprocess

import pytest

from recipes import cli
from recipes.launch.container_image import check_container_image
from recipes.launch.job_environment import CACHES
from tests.recipes.sbatch_support import SLURM_ARGS, groups, run_with_stubs, sruns

GOOD_IMAGES = [
    "/lustre/images/megatron-fork.sqsh",
    "nvcr.io#org/megatron-fork:26.01",
    "nvcr.io/nvidia/pytorch:26.01-py3",
    "docker://nvcr.io/nvidia/pytorch:26.01-py3",
    "megatron-fork:26.01",
    "registry.local:5000/team/megatron-fork@sha256:" + "0" * 64,
]
BAD_IMAGES = ["megatron-fork.sqsh", "./x.sqsh", "../images/x.sqsh", "megatron-fork", "a b:1"]


@pytest.mark.parametrize("image", GOOD_IMAGES)
def test_absolute_paths_and_pinned_registry_references_are_accepted(image):
    check_container_image(image)


def _error(capsys, arguments: list[str]) -> str:
    """The one line a refused launch prints (status 2, before NeMo-Run is asked anything)."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(arguments)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("recipes: error: ")
    return lines[-1]


SLURM = ["qwen3_8b", "--executor", "slurm", "--account", "acct", "--mount", "/l:/l"]


@pytest.mark.parametrize("image", [*BAD_IMAGES, None])
def test_relative_or_missing_images_are_refused_in_one_line(capsys, image):
    arguments = [*SLURM, "--dryrun"] + ([] if image is None else ["--container-image", image])
    error = _error(capsys, arguments)
    expected = "is required" if image is None else f"--container-image {image!r}"
    assert expected in error and "absolute path to a squashfs file" in error


def test_a_squashfs_missing_on_the_submit_host_is_refused_before_submitting(capsys, tmp_path):
    image = str(tmp_path / "missing.sqsh")
    mounts = ["--mount", f"{tmp_path}:/data"]
    paths = [f"{k}=/data/x" for k in ("base_model", "output_dir", "data.train", "data.eval")]
    error = _error(capsys, [*SLURM, *mounts, *paths, "--container-image", image])
    assert f"--container-image {image}: no such file on this host" in error


def test_both_node_groups_get_the_site_defaults(sbatch_in_process, tmp_path):
    script = sbatch_in_process("qwen3_8b", "--env", "TRITON_CACHE_DIR=/mine")
    for group in groups(script):
        assert group["mem"] == "0" and "exclusive" in group  # all of the node, memory too
    ran = run_with_stubs(script, tmp_path, {"PYTHONPATH": "/login/venv/site-packages"})
    for index, (options, _) in sruns(script).items():
        assert {"label", "container-writable", "no-container-mount-home"} <= set(options)
        assert options["cpu-bind"] == "none"
        argv, env = ran.calls[index]
        assert env["PYTHONNOUSERSITE"] == "1" and "PYTHONPATH" not in env  # login's, unset
        for key, leaf in CACHES.items():
            expected = "/mine" if key == "TRITON_CACHE_DIR" else f"/tmp/rlvr-4242/{leaf}"
            assert env[key] == expected  # --env wins over the defaults
        # pyxis lets an image's own value win unless the name is listed here.
        named = set(options["container-env"].split(","))
        assert {*CACHES, "PYTHONNOUSERSITE", "SGLANG_API_KEY", "ENGINE_NODES"} <= named


def test_a_cache_folder_can_be_chosen(sbatch_in_process, tmp_path):
    script = sbatch_in_process("qwen3_32b", "--cache-dir", "/results/jit cache/")
    _, env = run_with_stubs(script, tmp_path, {}).calls[1]
    assert env["TRITON_CACHE_DIR"] == "/results/jit cache/4242/triton"  # a folder per job
    assert env["FLASHINFER_WORKSPACE_BASE"] == "/results/jit cache/4242/flashinfer"
    assert "XDG_CACHE_HOME" not in env  # enroot would keep its image layers under it, on the host


def test_scheduling_options_reach_both_node_groups(sbatch_in_process):
    script = sbatch_in_process(
        "qwen3_14b",
        *("--qos", "high", "--reservation", "rl-week", "--constraint", "h100&ib"),
        *("--mem", "1800G", "--gres", "gpu:h100:8", "--job-name", "q14b-top20"),
    )
    trainer, engines = groups(script)
    for group in (trainer, engines):
        assert group["qos"] == "high" and group["reservation"] == "rl-week"
        assert group["constraint"] == "'h100&ib'" and group["mem"] == "1800G"
        assert group["gres"] == "gpu:h100:8" and "gpus-per-node" not in group
    assert (trainer["job-name"], engines["job-name"]) == ("q14b-top20-0", "q14b-top20-1")
    runs = sruns(script)
    assert "/log-q14b-top20_%j_" in runs[0][0]["output"]
    assert "/log-q14b-top20-engines_%j_" in runs[1][0]["output"]


def test_a_gres_for_another_gpu_count_is_refused(capsys):
    paths = [f"{k}=/l/x" for k in ("base_model", "output_dir", "data.train", "data.eval")]
    image = ["--container-image", "/i.sqsh"]
    error = _error(capsys, [*SLURM, *paths, *image, "--gres", "gpu:4", "--dryrun"])
    assert "--gres gpu:4 asks for another GPU count than the recipe's" in error


def test_trainer_logs_carry_ranks_and_the_rendezvous_waits_for_slow_nodes(sbatch_in_process):
    torchrun = sruns(sbatch_in_process("qwen3_32b"))[0][1]
    assert "--rdzv-conf=join_timeout=1800,read_timeout=1800" in torchrun
    assert "--log-dir=/nemo_run/rank-logs" in torchrun and "--tee=3" in torchrun
    torchrun = sruns(sbatch_in_process("qwen3_32b", "--rendezvous-timeout", "3600"))[0][1]
    assert "--rdzv-conf=join_timeout=3600,read_timeout=3600" in torchrun


def test_network_settings_of_the_submitting_shell_reach_every_task(
    sbatch_in_process, tmp_path, monkeypatch
):
    monkeypatch.setenv("NCCL_HOME", "/login/modules/nccl")  # the login node's, not a setting
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "=ib0,ib1")
    monkeypatch.setenv("NCCL_IB_HCA", "mlx5_0:1,mlx5_1:1")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "ib0")
    script = sbatch_in_process("qwen3_8b", "--env", "NCCL_DEBUG=INFO")
    ran = run_with_stubs(script, tmp_path, {"NCCL_IB_HCA": "login-node-value"})
    for index, (options, _) in sruns(script).items():
        _, env = ran.calls[index]
        assert env["NCCL_SOCKET_IFNAME"] == "=ib0,ib1" and env["NCCL_IB_HCA"] == "mlx5_0:1,mlx5_1:1"
        assert env["GLOO_SOCKET_IFNAME"] == "ib0" and env["NCCL_DEBUG"] == "INFO"
        assert "NCCL_HOME" not in options["container-env"].split(",")
        assert {"NCCL_SOCKET_IFNAME", "NCCL_IB_HCA", "NCCL_DEBUG"} <= set(
            options["container-env"].split(",")
        )


def _git(folder, *args: str) -> None:
    subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True)


def test_the_git_packager_ships_only_a_clean_checkout(
    sbatch_in_process, capsys, tmp_path, monkeypatch
):
    outside = tmp_path / "not_a_checkout"
    outside.mkdir()
    monkeypatch.chdir(outside)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    arguments = ["qwen3_8b", *SLURM_ARGS, "--packager", "git", "--dryrun"]
    assert f"{outside} is not in one: run from the project's checkout" in _error(capsys, arguments)

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    _git(checkout, "init", "-q")
    (checkout / "train.py").write_text("print(1)\n")
    _git(checkout, "add", "train.py")
    _git(checkout, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    monkeypatch.chdir(checkout)
    (checkout / "train.py").write_text("print(2)\n")
    assert "which has uncommitted changes: commit them" in _error(capsys, arguments)

    _git(checkout, "checkout", "--", "train.py")
    (checkout / "notes.txt").write_text("scratch")
    sbatch_in_process("qwen3_8b", "--packager", "git")
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=checkout, text=True, capture_output=True
    ).stdout.strip()
    shipped = f"recipes: shipping commit {head} of {checkout} (1 untracked files are not shipped)"
    assert shipped in sbatch_in_process.stderr
