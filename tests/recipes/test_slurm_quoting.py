"""User values reach the sbatch script quoted: for every recipe, overrides and ``--env`` values
with parentheses, spaces, both quotes, ``$``, ``;``, backticks and NeMo-Run's own template
names give a script ``bash -n`` accepts, and running it (real bash, stub srun) hands every
value to the tasks unchanged, while the script's own expansions still expand. The engines' API
key is made in the job and never printed: not in the script, not in its ``set -x`` trace."""

import re
import subprocess

import pytest

from recipes import cli
from recipes.registry import RECIPES, build_recipe
from tests.recipes.sbatch_support import SLURM_ARGS, run_with_stubs, sruns

NASTY = "a b 'c' \"d\" $HOME ${HOME} $(id) `id` ; & | < > * ? ~ \\ ${head_node_ip_var} $$ %j"
"""Shell syntax of every kind, and names NeMo-Run's ``string.Template`` pass would replace."""
OVERRIDES = [
    f"output_dir=/results/run ({NASTY})",
    f"data.train=/data/train {NASTY}.parquet",
    "parallel.recompute=selective",
    "parallel.recompute_modules=('mlp',)",  # as the README recommends it
]
ENV_VALUE = f"x=1 {NASTY}"


def _paths(name: str) -> list[str]:
    """The tiny recipe's paths default to relative ones, which the mount check refuses."""
    return ["base_model=/checkpoints/tiny", "data.eval=/data/eval"] if name == "tiny_cpu" else []


def _check_script(script: str, tmp_path, name: str, overrides: list[str]) -> None:
    path = tmp_path / f"{name}.sbatch"
    path.write_text(script)
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    runs = sruns(script)
    trainer = runs[0][1]
    assert trainer[trainer.index("recipes.train") + 1 :] == [name, *overrides]
    if 1 in runs:
        assert runs[1][1] == ["python", "-m", "recipes.engine_task", name, *overrides]
    # The script's own expansions are left to bash.
    assert "--rdzv-endpoint=${het_group_host_0:-$head_node}:29500" in trainer
    assert "--rdzv-id=$SLURM_JOB_ID" in trainer


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_script_keeps_hostile_values_intact(sbatch_in_process, tmp_path, name):
    overrides = [*_paths(name), *OVERRIDES]
    script = sbatch_in_process(name, *overrides, "--env", f"RUN_NOTE={ENV_VALUE}")
    _check_script(script, tmp_path, name, overrides)

    ran = run_with_stubs(script, tmp_path, {})
    assert ran.returncode == 0, ran.output[-3000:]
    groups = [0, 1] if build_recipe(name).launch.engines.nodes else [0]
    assert sorted(ran.calls) == groups
    for group in groups:
        argv, env = ran.calls[group]
        assert argv[-len(overrides) :] == overrides  # what bash handed srun
        assert env["RUN_NOTE"] == ENV_VALUE
    argv = ran.calls[0][0]
    assert "--rdzv-endpoint=t1:29500" in argv and "--rdzv-id=4242" in argv


def test_external_engines_keep_their_url_tuple(sbatch_in_process, tmp_path):
    """Without an engine group the engines are named by ``rollout.server_urls=(...)``."""
    overrides = [
        "launch.engines.nodes=0",
        "rollout.server_urls=('http://h1:30000', 'http://h2:30000')",
        *OVERRIDES,
    ]
    script = sbatch_in_process("qwen3_8b", *overrides)
    _check_script(script, tmp_path, "qwen3_8b", overrides)
    assert set(sruns(script)) == {0}


def _api_key(ran) -> str:
    keys = {env.get("SGLANG_API_KEY") for _, env in ran.calls.values()}
    assert len(keys) == 1, keys  # one key, exported for both node groups
    return keys.pop()


def test_each_job_makes_its_own_api_key_and_never_prints_it(sbatch_in_process, tmp_path):
    script = sbatch_in_process("qwen3_14b")
    first = run_with_stubs(script, tmp_path / "a", {})
    second = run_with_stubs(script, tmp_path / "b", {})
    key = _api_key(first)
    assert re.fullmatch(r"[0-9a-f]{64}", key) and key != _api_key(second)
    assert "+ set +x" in first.output and "+ srun --het-group=1" in first.output  # traced
    assert key not in first.output and key not in script


def test_an_api_key_file_is_read_in_the_job_and_never_printed(sbatch_in_process, tmp_path):
    secret = "s3cr3t-key-7f2c"
    key_file = tmp_path / "key dir" / "api key"
    key_file.parent.mkdir()
    key_file.write_text(secret + "\n")
    script = sbatch_in_process("qwen3_32b", "--api-key-file", str(key_file))
    ran = run_with_stubs(script, tmp_path, {})
    assert _api_key(ran) == secret
    assert secret not in ran.output and secret not in script

    key_file.unlink()  # a job that cannot read the key stops before any srun
    missing = run_with_stubs(script, tmp_path / "again", {})
    assert missing.returncode == 1 and missing.calls == {}
    assert f"recipes: no API key in {key_file}" in missing.output


def _refused(capsys, *arguments: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["qwen3_8b", *SLURM_ARGS, *arguments, "--dryrun"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    return error[-1]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ("SGLANG_API_KEY=abc", "pass --api-key-file PATH"),
        ("http_proxy=http://proxy:3128", "write HTTP_PROXY if that is what you mean"),
        ("NCCL-DEBUG=INFO", "keys are upper-case letters, digits and '_'"),
        ("=x", "must look like KEY=VALUE"),
    ],
)
def test_secrets_and_lower_case_keys_are_refused_in_env(capsys, env, message):
    assert message in _refused(capsys, "--env", env)
