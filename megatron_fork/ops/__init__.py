"""Vocab-parallel numerics."""

from megatron_fork.ops.logprob_entropy import vocab_parallel_logprob_entropy

__all__ = ["vocab_parallel_logprob_entropy"]
