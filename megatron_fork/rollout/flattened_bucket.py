"""sglang's ``load_format="flattened_bucket"``: a bucket sent as ONE uint8 buffer, each tensor
flattened, viewed as bytes and concatenated in the order of its names (one collective or one
IPC handle per bucket instead of one per tensor). The names, dtypes and shapes travel beside
it, so the receiver cuts the buffer back into tensors."""

import torch


def flatten_bucket(named: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
    """[total bytes] uint8 on the tensors' device."""
    if not named:
        return torch.empty(0, dtype=torch.uint8)
    return torch.cat([t.detach().contiguous().reshape(-1).view(torch.uint8) for _, t in named])


def nbytes_of(shape, dtype: torch.dtype) -> int:
    return torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()


def unflatten_bucket(buffer: torch.Tensor, names, dtypes, shapes) -> list[tuple[str, torch.Tensor]]:
    """The tensors of ``flatten_bucket`` (copies: a tensor may start at an offset its dtype
    cannot be viewed at); the sizes must add up."""
    out, offset = [], 0
    for name, dtype, shape in zip(names, dtypes, shapes, strict=True):
        nbytes = nbytes_of(shape, dtype)
        if offset + nbytes > buffer.numel():
            raise ValueError(f"flattened bucket too short at {name!r}: names do not match it")
        piece = buffer[offset : offset + nbytes].clone()  # aligned storage of its own
        out.append((name, piece.view(dtype).view(tuple(shape))))
        offset += nbytes
    if offset != buffer.numel():
        raise ValueError(f"flattened bucket has {buffer.numel() - offset} bytes no name claims")
    return out
