"""Blockwise FP8 (e4m3) weights for rollout engines that serve FP8, in the layout sglang loads
for ``quantization_config = {"quant_method": "fp8", "weight_block_size": [128, 128]}``: each
linear weight becomes e4m3 values plus ``<name>_scale_inv`` (fp32, one per 128 x 128 block;
value = e4m3 * scale_inv). Each block is scaled so its largest magnitude maps to e4m3's largest
finite value (448), so the error of an element is at most half a step of e4m3 at its
magnitude: 2^-4 of it for normal values, 2^-10 of the block's scale below e4m3's smallest normal.
"""

from collections.abc import Iterable, Iterator

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
BLOCK = 128
QUANTIZED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The linear layers quantised (as sglang's FP8 checkpoints: embeddings, norms and the output
layer stay in the model's dtype)."""
QUANTIZATION_CONFIG = {
    "quant_method": "fp8",
    "fmt": "e4m3",
    "activation_scheme": "dynamic",
    "weight_block_size": [BLOCK, BLOCK],
}
"""The ``quantization_config`` an FP8 engine's config.json needs to load (and be updated with)
blockwise e4m3 weights plus ``weight_scale_inv``, as sglang's ``Fp8Config.from_config`` reads it;
without it ``--quantization fp8`` quantises per tensor at load, which the sync's blocks do not
match."""


def _blocks(shape: tuple[int, int], block: int) -> tuple[int, int]:
    return -(-shape[0] // block), -(-shape[1] // block)


def quantize_blockwise(weight: torch.Tensor, block: int = BLOCK):
    """[M, N] weight -> (e4m3 [M, N], scale_inv fp32 [ceil(M/b), ceil(N/b)])."""
    if weight.dim() != 2:
        raise ValueError(f"blockwise FP8 takes 2-D weights, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    mb, nb = _blocks((rows, cols), block)
    padded = weight.new_zeros(mb * block, nb * block, dtype=torch.float32)
    padded[:rows, :cols] = weight.float()
    tiles = padded.view(mb, block, nb, block)
    amax = tiles.abs().amax(dim=(1, 3))  # [mb, nb]
    scale_inv = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    scaled = (tiles / scale_inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX)  # fp32 rounding
    quantized = scaled.to(FP8)
    return quantized.view(mb * block, nb * block)[:rows, :cols].contiguous(), scale_inv


def dequantize_blockwise(quantized: torch.Tensor, scale_inv: torch.Tensor, block: int = BLOCK):
    """The fp32 weight an FP8 engine computes with."""
    rows, cols = quantized.shape
    scale = scale_inv.repeat_interleave(block, 0).repeat_interleave(block, 1)[:rows, :cols]
    return quantized.float() * scale


def fp8_named_tensors(
    named: Iterable[tuple[str, torch.Tensor]], block: int = BLOCK
) -> Iterator[tuple[str, torch.Tensor]]:
    """HF-named tensors with every ``QUANTIZED`` linear weight as e4m3 + ``_scale_inv``."""
    for name, tensor in named:
        layer = name.rsplit(".", 2)[-2] if name.count(".") >= 2 else ""
        if layer in QUANTIZED and name.endswith(".weight"):
            quantized, scale_inv = quantize_blockwise(tensor, block)
            yield name, quantized
            yield name + "_scale_inv", scale_inv
        else:
            yield name, tensor


def dequantize_named_tensors(
    named: Iterable[tuple[str, torch.Tensor]], dtype=torch.float32, block: int = BLOCK
) -> list[tuple[str, torch.Tensor]]:
    """The inverse of ``fp8_named_tensors`` over one update (a weight and its scale travel in
    the same bucket): what an engine without FP8 kernels loads to compute as an FP8 one."""
    named = list(named)
    suffix = "_scale_inv"
    scales = {name.removesuffix(suffix): t for name, t in named if name.endswith(suffix)}
    out = []
    for name, tensor in named:
        if name.endswith(suffix):
            continue
        if tensor.dtype == FP8:
            if name not in scales:
                raise ValueError(f"{name} arrived in FP8 without {name}_scale_inv")
            tensor = dequantize_blockwise(tensor, scales[name], block).to(dtype)
        out.append((name, tensor))
    return out
