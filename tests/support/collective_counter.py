"""Count the torch.distributed collectives a piece of code enters (wraps the real calls)."""

import contextlib
from collections import Counter

import torch.distributed as dist

_NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter")


@contextlib.contextmanager
def count_collectives():
    """Yields a Counter of collective name (and ``all_reduce:OP``) -> calls, while active."""
    counts = Counter()
    originals = {name: getattr(dist, name) for name in _NAMES}

    def wrap(name, fn):
        def counted(*args, **kwargs):
            counts[name] += 1
            if name == "all_reduce":
                counts[f"all_reduce:{kwargs.get('op', dist.ReduceOp.SUM)}"] += 1
            return fn(*args, **kwargs)

        return counted

    for name, fn in originals.items():
        setattr(dist, name, wrap(name, fn))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
