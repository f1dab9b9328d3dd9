"""Checks made before a conversion touches anything: the parallel layout fits the model and
the launch, and the output path is free (or replacing it was asked for)."""

from pathlib import Path


def check_parallel_layout(hf_config, tensor_parallel: int, pipeline_parallel: int) -> None:
    """Megatron splits attention heads (query and key/value) over TP ranks and whole layers
    over PP stages; a layout that does not divide them is refused with the numbers."""
    if tensor_parallel < 1 or pipeline_parallel < 1:
        raise ValueError(f"--tp and --pp must be >= 1, got {tensor_parallel}, {pipeline_parallel}")
    heads, groups = hf_config.num_attention_heads, hf_config.num_key_value_heads
    for label, count in (("num_attention_heads", heads), ("num_key_value_heads", groups)):
        if count % tensor_parallel:
            raise ValueError(
                f"{label}={count} does not divide by --tp {tensor_parallel}: Megatron splits "
                "heads over tensor-parallel ranks; choose a TP that divides "
                f"{heads} attention and {groups} key/value heads"
            )
    ffn = hf_config.intermediate_size
    if ffn % tensor_parallel:
        raise ValueError(
            f"intermediate_size={ffn} does not divide by --tp {tensor_parallel}: Megatron splits "
            "the MLP over tensor-parallel ranks; choose a TP that divides it"
        )
    layers = hf_config.num_hidden_layers
    if layers % pipeline_parallel:
        raise ValueError(
            f"num_hidden_layers={layers} does not divide by --pp {pipeline_parallel}: each "
            "pipeline stage holds the same number of layers; choose a PP that divides it"
        )


def check_world_size(world_size: int, tensor_parallel: int, pipeline_parallel: int) -> None:
    if tensor_parallel < 1 or pipeline_parallel < 1:
        raise ValueError(f"--tp and --pp must be >= 1, got {tensor_parallel}, {pipeline_parallel}")
    if world_size != tensor_parallel * pipeline_parallel:
        raise ValueError(
            f"{world_size} processes for TP={tensor_parallel} x PP={pipeline_parallel}: launch "
            f"exactly {tensor_parallel * pipeline_parallel} (torchrun --nproc_per_node="
            f"{tensor_parallel * pipeline_parallel} -m checkpoints_convert ...)"
        )


def check_output(out: str | Path, force: bool, source: str | Path) -> None:
    """``out`` is free (or ``force``), and replacing it cannot delete the ``source``."""
    out, source = Path(out).resolve(), Path(source).resolve()
    if out == source or out in source.parents:
        raise ValueError(f"--out {out} would replace the input {source}: choose another folder")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists: pass --force to replace it")
