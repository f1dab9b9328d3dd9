"""Which text pieces the forking tokens are: the most frequent pieces among the top ``rho``
share of tokens by entropy (exactly the trainer's count, ``overlap.top_positions``), and among
the others, with their counts and their share of each group (honest counts rather than a word
cloud)."""

from collections import Counter

import torch

from megatron_fork.analysis.overlap import top_positions


def frequent_pieces(
    pieces: list[str], entropy: torch.Tensor, rho: float = 0.2, top: int = 20
) -> dict[str, list[tuple[str, int, float]]]:
    """{"high": [(piece, count, share of the high group)], "low": [...]}, most frequent first
    (ties by piece, for a stable order)."""
    if len(pieces) != entropy.numel():
        raise ValueError(f"{len(pieces)} pieces for {entropy.numel()} entropies")
    high = top_positions(entropy.flatten(), rho).tolist()
    groups = {
        "high": Counter(p for p, h in zip(pieces, high, strict=True) if h),
        "low": Counter(p for p, h in zip(pieces, high, strict=True) if not h),
    }
    table = {}
    for name, counts in groups.items():
        total = sum(counts.values())
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
        table[name] = [(piece, n, n / total) for piece, n in ranked]
    return table
