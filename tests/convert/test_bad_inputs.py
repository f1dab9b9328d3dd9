"""Every bad input gets an error naming the problem and the fix, before anything is written:
missing or corrupt shards, config/weights mismatch, layouts that do not divide the model,
unsupported model types, an existing output, pickled weights, a crafted checkpoint index;
and a conversion killed midway leaves no output folder."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest

from checkpoints_convert.checks import check_parallel_layout
from checkpoints_convert.hf_to_mcore import convert_hf_to_mcore
from checkpoints_convert.mcore_to_hf import convert_mcore_to_hf
from megatron_fork.trainer.trainer_config import ParallelConfig
from tests.support.convert_cli import ENV, convert
from tests.support.distributed import run_distributed
from tests.support.hf_folders import write_hf_folder
from tests.support.tiny_qwen3 import tiny_qwen3_config

TP1 = ParallelConfig(vocab_multiple=16)


@pytest.fixture
def hf_dir(tmp_path):
    write_hf_folder(tmp_path / "hf")
    return tmp_path / "hf"


def _shards(hf_dir):
    return sorted(hf_dir.glob("model-*.safetensors"))


def _refused(hf_dir, out, error, match, parallel=TP1):
    with pytest.raises(error, match=match):
        convert_hf_to_mcore(hf_dir, out, parallel)
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()


def test_missing_shard_is_named(hf_dir, tmp_path):
    missing = _shards(hf_dir)[1]
    missing.unlink()
    _refused(hf_dir, tmp_path / "out", FileNotFoundError, f"{missing.name}: shard missing")


def test_truncated_shard_is_named(hf_dir, tmp_path):
    shard = _shards(hf_dir)[0]
    shard.write_bytes(shard.read_bytes()[:-64])
    _refused(hf_dir, tmp_path / "out", ValueError, f"{shard.name}: not a readable safetensors")


def test_config_that_does_not_match_the_weights(hf_dir, tmp_path):
    config = json.loads((hf_dir / "config.json").read_text())
    config["intermediate_size"] = 64  # the weights were saved with 48
    (hf_dir / "config.json").write_text(json.dumps(config))
    _refused(hf_dir, tmp_path / "out", ValueError, r"do not match: shape.*gate_proj.*\(64, 32\)")


def test_unsupported_model_type(hf_dir, tmp_path):
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    _refused(hf_dir, tmp_path / "out", ValueError, "model_type is 'llama'")


def test_pickled_weights_are_not_read(hf_dir, tmp_path):
    for file in [*_shards(hf_dir), hf_dir / "model.safetensors.index.json"]:
        file.unlink()
    (hf_dir / "pytorch_model.bin").write_bytes(b"not loaded")
    _refused(hf_dir, tmp_path / "out", FileNotFoundError, "pickled weights are not read")


def test_layouts_that_do_not_divide_the_model():
    config = tiny_qwen3_config()  # 4 attention heads, 2 key/value heads, 2 layers
    with pytest.raises(ValueError, match="num_attention_heads=4 does not divide by --tp 3"):
        check_parallel_layout(config, 3, 1)
    with pytest.raises(ValueError, match="num_key_value_heads=2 does not divide by --tp 4"):
        check_parallel_layout(tiny_qwen3_config(num_key_value_heads=2), 4, 1)
    with pytest.raises(ValueError, match="num_hidden_layers=2 does not divide by --pp 3"):
        check_parallel_layout(config, 1, 3)
    config.intermediate_size = 49
    with pytest.raises(ValueError, match="intermediate_size=49 does not divide by --tp 2"):
        check_parallel_layout(config, 2, 1)


def test_existing_output_needs_force_and_never_replaces_the_input(hf_dir, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="pass --force"):
        convert_hf_to_mcore(hf_dir, tmp_path / "out", TP1)
    for out in (hf_dir, tmp_path):  # the input itself, or a folder holding it
        with pytest.raises(ValueError, match="would replace the input"):
            convert_hf_to_mcore(hf_dir, out, TP1, force=True)
    assert (hf_dir / "config.json").is_file()


def test_cli_reports_a_bad_launch_in_one_line(hf_dir, tmp_path):
    done = convert("hf-to-mcore", "--hf", str(hf_dir), "--out", str(tmp_path / "o"), "--tp", "2",
                   check=False)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "checkpoints_convert: error: 1 processes for TP=2 x PP=1: launch exactly 2 "
        "(torchrun --nproc_per_node=2 -m checkpoints_convert ...)"
    )


def _convert_worker(rank, world, hf_dir, out):
    from tests.support.megatron_setup import init_megatron

    init_megatron()
    convert_hf_to_mcore(hf_dir, out, TP1)


def _wrong_config_worker(rank, world, mcore, other_config_dir, out):
    from tests.support.megatron_setup import init_megatron

    init_megatron()
    with pytest.raises(ValueError, match="does not fit the model"):
        convert_mcore_to_hf(mcore, out, TP1, hf_metadata=other_config_dir)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


class _CallsACheckpointFunction:
    """Names from PyTorch's checkpoint package that act (write files) are refused as well."""

    def __reduce__(self):
        from torch.distributed.checkpoint.filesystem import FileSystemWriter

        return (FileSystemWriter, ("written_by_unpickling",))


def _overwrite_extra_state(checkpoint, payload: bytes) -> None:
    metadata = pickle.loads((checkpoint / ".metadata").read_bytes())  # our own file: trusted
    entry = next(i for i in metadata.storage_data.items() if "_extra_state" in i[0].fqn)
    index, info = entry
    assert len(payload) <= info.length
    path = checkpoint / info.relative_path
    data = bytearray(path.read_bytes())
    data[info.offset : info.offset + len(payload)] = payload
    path.write_bytes(bytes(data))


def _tampered_worker(rank, world, mcore, out):
    from tests.support.megatron_setup import init_megatron

    init_megatron()
    with pytest.raises(ValueError, match="refused, the checkpoint holds pickled objects"):
        convert_mcore_to_hf(mcore, out, TP1)


def test_bad_megatron_checkpoints(hf_dir, tmp_path):
    mcore, out = tmp_path / "mcore", tmp_path / "out"
    run_distributed(_convert_worker, 1, str(hf_dir), str(mcore))
    with pytest.raises(FileNotFoundError, match="not a Megatron distributed checkpoint"):
        convert_mcore_to_hf(hf_dir, out, TP1)

    bare = tmp_path / "bare"  # e.g. a checkpoint from another tool: no hf/ folder
    shutil.copytree(mcore, bare, ignore=shutil.ignore_patterns("hf"))
    with pytest.raises(FileNotFoundError, match="pass --hf-metadata DIR"):
        convert_mcore_to_hf(bare, out, TP1)

    crafted = tmp_path / "crafted"
    shutil.copytree(mcore, crafted)
    (crafted / ".metadata").write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(ValueError, match="posix.system is not allowed"):
        convert_mcore_to_hf(crafted, out, TP1)
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")
    (crafted / ".metadata").write_bytes(pickle.dumps(_CallsACheckpointFunction()))
    with pytest.raises(ValueError, match="filesystem.FileSystemWriter is not allowed"):
        convert_mcore_to_hf(crafted, out, TP1)

    # The index untouched, a layer's extra-state bytes replaced by a code-running pickle:
    # PyTorch would unpickle them with weights_only=False; here they load weights-only.
    tampered = tmp_path / "tampered"
    shutil.copytree(mcore, tampered)
    _overwrite_extra_state(tampered, pickle.dumps(_RunsCode(), protocol=2))
    run_distributed(_tampered_worker, 1, str(tampered), str(out))
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")

    shard = sorted(mcore.glob("*.distcp"))[0]
    truncated = tmp_path / "truncated"
    shutil.copytree(mcore, truncated)
    (truncated / shard.name).write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{shard.name}: truncated"):
        convert_mcore_to_hf(truncated, out, TP1)
    (truncated / shard.name).unlink()
    with pytest.raises(FileNotFoundError, match=f"{shard.name}: missing from the checkpoint"):
        convert_mcore_to_hf(truncated, out, TP1)

    other = tmp_path / "other"  # another model's config: 3 layers instead of 2
    other.mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    config.pop("layer_types", None)
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    run_distributed(_wrong_config_worker, 1, str(mcore), str(other), str(out))
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_killed_conversion_leaves_no_output(tmp_path):
    """A model big enough (~130 MB) that its checkpoint takes a while to write; the process
    is killed once the temporary folder exists, and the output path must be absent."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=32000, hidden_size=512, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, tie_word_embeddings=False)  # fmt: skip
    Qwen3ForCausalLM(config).save_pretrained(tmp_path / "hf")
    out = tmp_path / "mcore"
    tmp = out.with_name("mcore.tmp")
    command = [sys.executable, "-m", "checkpoints_convert", "hf-to-mcore",
               "--hf", str(tmp_path / "hf"), "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not tmp.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert process.poll() is None, "the conversion ended before it could be killed midway"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()
    convert("hf-to-mcore", "--hf", str(tmp_path / "hf"), "--out", str(out))  # starts over
    assert out.is_dir() and not tmp.exists()


def _write_fails_worker(rank, world, mcore, out):
    """The stage-1 writer cannot write (as on a full disk): both ranks raise, none hangs."""
    from megatron_fork.models import hf_directory
    from tests.support.megatron_setup import init_megatron

    init_megatron(pp=2)
    if rank == 1:

        def disk_full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        hf_directory.save_file = disk_full
    expected = OSError if rank == 0 else RuntimeError
    with pytest.raises(expected, match="stage 1: OSError.*No space left on device"):
        convert_mcore_to_hf(mcore, out, ParallelConfig(pipeline_parallel=2, vocab_multiple=16))


def test_a_failed_stage_writer_fails_every_rank_and_leaves_no_output(hf_dir, tmp_path):
    mcore, out = tmp_path / "mcore", tmp_path / "out"
    run_distributed(_convert_worker, 1, str(hf_dir), str(mcore))
    run_distributed(_write_fails_worker, 2, str(mcore), str(out), timeout=120)
    assert not out.exists() and not list(tmp_path.glob("out*"))
