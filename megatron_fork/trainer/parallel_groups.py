"""The process groups the loss needs, taken once from Megatron's parallel state and passed on."""

from dataclasses import dataclass

from megatron_fork.parallel.groups import group_size


@dataclass(frozen=True)
class LossGroups:
    """Process groups of the loss (None = this process alone)."""

    tp: object = None
    """Tensor-parallel group: the vocabulary is split over it."""
    cp: object = None
    """Context-parallel group: one sequence's shards."""
    dp_cp: object = None
    """Data x context parallel group: every rank holding a different part of the batch."""

    @classmethod
    def from_parallel_state(cls) -> "LossGroups":
        from megatron.core import parallel_state as ps

        return cls(
            tp=ps.get_tensor_model_parallel_group(),
            cp=ps.get_context_parallel_group(),
            dp_cp=ps.get_data_parallel_group(with_context_parallel=True),
        )

    @property
    def cp_size(self) -> int:
        return group_size(self.cp)

    @property
    def dp_size(self) -> int:
        """Data-parallel replicas (the DP x CP group over the CP size)."""
        return group_size(self.dp_cp) // self.cp_size

    def scope_group(self, scope: str):
        """The group a selection scope spans: one DP rank's CP shards (local_microbatch), or
        every DP x CP rank (global_microbatch, and global_step across all micro-batches)."""
        groups = {"local_microbatch": self.cp, "global_microbatch": self.dp_cp}
        groups["global_step"] = self.dp_cp
        if scope not in groups:
            raise ValueError(f"unknown scope {scope!r}; choose one of {tuple(groups)}.")
        return groups[scope]
