"""Token counts and selections that span the whole optimizer step (all micro-batches, DP, CP).

Computed once per step before the first micro-batch, from the micro-batches this rank holds.
All functions take the CP-sharded micro-batches of this rank and its ``LossGroups``.
"""

import torch

from megatron_fork.forking.config import ForkingLossConfig
from megatron_fork.forking.selection import num_to_select, select_forking_tokens
from megatron_fork.parallel.groups import all_reduce_, group_rank
from megatron_fork.trainer.parallel_groups import LossGroups


def _valid_counts(microbatches) -> torch.Tensor:
    return torch.stack([mb.valid_mask.sum() for mb in microbatches]).to(torch.int64)  # [M]


def _selected_count(config: ForkingLossConfig, microbatches, groups: LossGroups) -> torch.Tensor:
    """Global number of selected tokens in the step, as the scope's k's add up."""
    counts = _valid_counts(microbatches)  # [M] this rank's shard of each micro-batch
    if config.strategy == "all" or config.scope == "global_step":
        total = all_reduce_(counts.sum().reshape(1), groups.dp_cp)[0]
        return total if config.strategy == "all" else num_to_select(config.rho, total)
    if config.scope == "global_microbatch":
        return num_to_select(config.rho, all_reduce_(counts, groups.dp_cp)).sum()
    # local_microbatch: k per micro-batch of one DP rank (its CP shards together), summed over DP.
    k = num_to_select(config.rho, all_reduce_(counts, groups.cp)).sum()
    k = k if group_rank(groups.cp) == 0 else torch.zeros_like(k)
    return all_reduce_(k.reshape(1), groups.dp_cp)[0]


def step_normalizer(config: ForkingLossConfig, microbatches, groups: LossGroups) -> torch.Tensor:
    """The loss denominator N of the optimizer step: valid or selected tokens over all ranks."""
    if config.normalizer == "all_tokens":
        return all_reduce_(_valid_counts(microbatches).sum().reshape(1), groups.dp_cp)[0]
    return _selected_count(config, microbatches, groups)


def select_step_tokens(
    config: ForkingLossConfig, microbatches, entropies, groups: LossGroups
) -> list[torch.Tensor]:
    """Scope ``global_step``: one selection over every token of the step, from the old-logprob
    pass's ``entropies`` ([b, s] per micro-batch); returns the [b, s] mask of each micro-batch."""
    flat = lambda tensors: torch.cat([t.flatten() for t in tensors])
    mask = select_forking_tokens(
        flat(entropies),
        flat([mb.valid_mask for mb in microbatches]),
        config.rho,
        config.strategy,
        groups.dp_cp,
        config.seed,
        flat([mb.token_order for mb in microbatches]),
    )
    sizes = [mb.valid_mask.numel() for mb in microbatches]
    pieces = mask.split(sizes)
    return [p.view_as(mb.valid_mask) for p, mb in zip(pieces, microbatches, strict=True)]
