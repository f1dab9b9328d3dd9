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


def _valid_count(config: ForkingLossConfig, microbatches, groups: LossGroups) -> torch.Tensor:
    """Global number of valid response tokens in the step."""
    return all_reduce_(_valid_counts(microbatches).sum().reshape(1), groups.dp_cp)[0]


def microbatch_rows(microbatch) -> int:
    """Samples (rows) in one micro-batch: verl's ``response_mask.shape[0]``, rows without a
    response token included; a packed micro-batch counts its samples, not its one row."""
    if getattr(microbatch, "num_samples", None) is not None:
        return microbatch.num_samples
    return microbatch.valid_mask.shape[0]


def _step_rows(config: ForkingLossConfig, microbatches, groups: LossGroups) -> torch.Tensor:
    """Global number of samples (rows) in the step, R: the CP ranks of a DP rank hold shards of
    the same rows, so the DP x CP sum counts each row CP times."""
    rows = torch.tensor([sum(microbatch_rows(mb) for mb in microbatches)], dtype=torch.int64)
    return all_reduce_(rows, groups.dp_cp)[0] // groups.cp_size


_STEP_NORMALIZERS = {
    "all_tokens": _valid_count,
    "selected_tokens": _selected_count,
    # Each micro-batch's N is |S_m| x R / rows_m (forward_step), so it is weighted by its share
    # of the step's rows, as verl's dynamic-batch loss scaling weights it.
    "microbatch_selected_mean": _step_rows,
}


def step_normalizer(config: ForkingLossConfig, microbatches, groups: LossGroups) -> torch.Tensor:
    """The step's constant of the loss denominator, over all ranks: the valid or selected tokens
    N (all_tokens, selected_tokens), or the rows R (microbatch_selected_mean)."""
    return _STEP_NORMALIZERS[config.normalizer](config, microbatches, groups)


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
