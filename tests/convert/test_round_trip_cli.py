"""The command line, as users run it: HF (tied embeddings, 4 key/value heads, random norms) ->
Megatron at TP=2 (torchrun, 2 gloo ranks) -> HF loaded at PP=2 (torchrun again: each stage
writes its own shards), and the result is the original folder: every tensor bit-exact in value
and dtype (bf16), the config, tokenizer and a generation config, loadable by
``AutoModelForCausalLM`` with the same greedy generation."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.support.convert_cli import ENV, convert
from tests.support.hf_folders import write_hf_folder


def _all_tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def test_hf_to_megatron_tp2_to_hf_is_bit_exact(tmp_path):
    from transformers import AutoModelForCausalLM

    # Tied embeddings: at PP=2 the last stage holds Megatron's copy of the embedding.
    original = write_hf_folder(tmp_path / "hf", tie=True, kv_heads=4, dtype=torch.bfloat16)
    convert("hf-to-mcore", "--hf", f"{tmp_path}/hf", "--out", f"{tmp_path}/mcore", "--tp", "2",
            nproc=2)  # fmt: skip
    assert (tmp_path / "mcore" / "hf" / "tokenizer.json").is_file()
    done = convert("mcore-to-hf", "--mcore", f"{tmp_path}/mcore", "--out", f"{tmp_path}/back",
                   "--max-shard-size", "10KB", nproc=2)  # fmt: skip
    assert "peak RSS per rank (MiB):" in done.stdout

    before, after = _all_tensors(tmp_path / "hf"), _all_tensors(tmp_path / "back")
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype == torch.bfloat16, name
        assert torch.equal(after[name], tensor), f"{name} changed in the round trip"
    index = json.loads((tmp_path / "back" / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in (tmp_path / "back").glob("*.safetensors"))
    assert sorted(set(index["weight_map"].values())) == shards and len(shards) > 2
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    for name in ("config.json", "tokenizer.json"):
        assert (tmp_path / "back" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes()
    assert (tmp_path / "back" / "generation_config.json").is_file()

    restored = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    prompt = torch.tensor([[3, 14, 15, 9, 2]])
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(restored.generate(prompt, **kwargs), original.generate(prompt, **kwargs))


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("checkpoints_convert")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0 and "hf-to-mcore" in done.stdout and "mcore-to-hf" in done.stdout
