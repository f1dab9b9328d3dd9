"""Bad inputs fail at once, through the command line, with one message naming the file and the
fix (exit status 2), before any model loads."""

import socket

import pytest

from megatron_fork.eval.__main__ import main
from tests.eval.support import write_prompt_file


def _fails(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


@pytest.fixture
def prompts(tmp_path):
    return write_prompt_file(tmp_path / "prompts.jsonl", 2)


def test_a_missing_model_is_named_with_the_fix(capsys, tmp_path, prompts):
    err = _fails(capsys, ["--model", str(tmp_path / "nope"), "--prompts", str(prompts),
                          "--out", str(tmp_path / "o")])  # fmt: skip
    assert f"model {tmp_path / 'nope'}: no such folder; pass a Hugging Face folder" in err


def test_a_folder_without_weights_is_named(capsys, tmp_path, prompts, base_model):
    folder = tmp_path / "config_only"
    folder.mkdir()
    (folder / "config.json").write_text((base_model / "config.json").read_text())
    err = _fails(
        capsys, ["--model", str(folder), "--prompts", str(prompts), "--out", str(tmp_path)]
    )
    assert f"model {folder}: no *.safetensors weights there; pass a Hugging Face folder" in err


def test_a_model_without_a_tokenizer_is_named(capsys, tmp_path, prompts, base_model):
    folder = tmp_path / "no_tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((base_model / name).read_bytes())
    err = _fails(
        capsys, ["--model", str(folder), "--prompts", str(prompts), "--out", str(tmp_path)]
    )
    assert f"model {folder}: " in err and "tokenizer" in err


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "not found; pass an AIME/MATH-style JSONL, JSON or parquet file"),
        ('{"problem": "1 2:"}\n{"question": "3 4:", "answer": ""}\n',
         "no usable rows (kept 0 of 2 rows; skipped 2 (empty_answer 1, missing_answer 1))"),
        ("[{broken", "a JSON array that does not parse"),
        ("not parquet at all", "not a readable parquet file"),
    ],
    ids=["missing", "no-usable-rows", "broken-json", "broken-parquet"],
)  # fmt: skip
def test_a_bad_prompt_file_is_named_with_the_fix(capsys, tmp_path, base_model, content, expected):
    suffix = ".parquet" if content == "not parquet at all" else ".json"
    path = tmp_path / f"aime{suffix}"
    if content is not None:
        path.write_text(content)
    err = _fails(
        capsys, ["--model", str(base_model), "--prompts", str(path), "--out", str(tmp_path)]
    )
    assert f"prompt file {path}: " in err and expected in err, err
    assert "pass an AIME/MATH-style" in err


def test_server_engine_needs_live_servers(capsys, tmp_path, prompts, base_model):
    base = ["--model", str(base_model), "--prompts", str(prompts), "--out", str(tmp_path / "o")]
    err = _fails(capsys, [*base, "--engine", "sglang"])
    assert "engine sglang needs --server-url URL" in err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    err = _fails(capsys, [*base, "--engine", "sglang", "--server-url", url])
    assert f"server {url} does not answer" in err and "fix --server-url" in err
    assert not (tmp_path / "o" / "samples.jsonl").exists()


def test_unknown_settings_are_refused_by_the_parser(capsys, tmp_path, prompts, base_model):
    with pytest.raises(SystemExit):
        main(["--model", str(base_model), "--prompts", str(prompts), "--out", str(tmp_path),
              "--engine", "trtllm"])  # fmt: skip
    assert "invalid choice: 'trtllm'" in capsys.readouterr().err
    err = _fails(capsys, ["--model", str(base_model), "--prompts", str(prompts),
                          "--out", str(tmp_path), "--k", "0"])  # fmt: skip
    assert "k must be >= 1" in err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--top-p", "1.5", "top_p must be in (0, 1]"), ("--top-k", "0", "top_k must be -1"),
     ("--k", "10000", "k must be < 10000")],
)  # fmt: skip
def test_bad_sampling_is_refused_before_any_model_loads(
    capsys, tmp_path, prompts, flag, value, message
):
    err = _fails(capsys, ["--model", str(tmp_path / "nowhere"), "--prompts", str(prompts),
                          "--out", str(tmp_path / "o"), flag, value])  # fmt: skip
    assert message in err and "nowhere" not in err  # the settings, not the (missing) model
