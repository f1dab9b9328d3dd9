"""Hugging Face Qwen3 folders for conversion tests: a real ``Qwen3ForCausalLM`` with random
weights saved by ``save_pretrained`` in several safetensors shards with their index, a real
tokenizer file, and the model's logits on fixed random tokens (the independent reference)."""

from pathlib import Path

import torch

from megatron_fork.data.tokenizer import build_and_save
from tests.support.tiny_qwen3 import tiny_qwen3_model

BATCH, SEQ = 2, 12
SHARD_SIZE = "20KB"  # the tiny model spans several shards


def write_hf_folder(
    directory: Path, tie: bool = False, kv_heads: int = 2, dtype=torch.float32, seed: int = 0
):
    """The saved model (eval mode); ``expected.pt`` beside the folder holds tokens + logits."""
    model = tiny_qwen3_model(seed=seed, tie=tie, num_key_value_heads=kv_heads)
    with torch.no_grad():  # norms start at 1.0: make them differ, so a swapped norm shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model = model.to(dtype)
    model.save_pretrained(directory, max_shard_size=SHARD_SIZE)
    build_and_save(directory)
    tokens = torch.randint(0, 60, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(tokens).logits
    torch.save({"tokens": tokens, "logits": logits}, expected_path(directory))
    return model


def expected_path(directory: Path) -> Path:
    return Path(directory).with_name(Path(directory).name + "_expected.pt")


def read_expected(directory) -> dict:
    return torch.load(expected_path(directory), weights_only=True)
