"""A Megatron checkpoint (``checkpoints_convert hf-to-mcore`` of the Hugging Face folder) is
evaluated through the trainer's mapping and gives the folder's samples and numbers; the
checkpoint is opened in a child process, as users run it (it starts a gloo process group)."""

import json
import subprocess
import sys

from megatron_fork.eval.runner import evaluate
from tests.eval.support import by_seed, sample_lines, tiny_settings, write_prompt_file
from tests.support.convert_cli import ENV, convert


def test_a_megatron_checkpoint_scores_as_its_hugging_face_folder(base_model, tmp_path):
    prompts = write_prompt_file(tmp_path / "prompts.jsonl", 6)
    folder_run = evaluate(tiny_settings(base_model, prompts, tmp_path / "hf"))
    checkpoint = tmp_path / "mcore"
    convert("hf-to-mcore", "--hf", str(base_model), "--out", str(checkpoint))
    out = tmp_path / "from_checkpoint"
    command = [
        sys.executable, "-m", "megatron_fork.eval", "--model", str(checkpoint),
        "--prompts", str(prompts), "--out", str(out), "--k", "4", "--max-new-tokens", "16",
        "--prompts-per-batch", "3", "--reward-workers", "1", "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["kind"] == "megatron" and folder_run["model"]["kind"] == "huggingface"
    for key in ("avg_at_k", "pass_at_k", "samples", "correct"):
        assert summary[key] == folder_run[key], key
    assert by_seed(sample_lines(out)) == by_seed(sample_lines(tmp_path / "hf"))
