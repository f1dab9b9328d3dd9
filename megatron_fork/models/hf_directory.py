"""Write a Hugging Face model directory (config.json, model.safetensors, tokenizer.json) as one
unit: into a temporary sibling, renamed into place when complete, so a crash never leaves a
directory that looks like a model but is not one."""

import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

HF_WEIGHTS_FILE = "model.safetensors"


def save_hf_model(
    directory: str | Path,
    hf_config,
    weights: Mapping[str, torch.Tensor],
    files: Mapping[str, str | Path] = (),
) -> Path:
    """``files`` maps names in the directory to files copied in (e.g. the tokenizer.json).
    An existing ``directory`` is replaced."""
    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    hf_config.save_pretrained(tmp)
    tensors = {name: t.detach().contiguous().cpu() for name, t in weights.items()}
    save_file(tensors, str(tmp / HF_WEIGHTS_FILE), metadata={"format": "pt"})
    for name, source in dict(files).items():
        shutil.copyfile(source, tmp / name)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
