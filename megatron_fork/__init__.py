"""Forking-token RLVR on Megatron-Core.

Sub-packages: ``backends`` (where Megatron-Core runs), ``ops`` (vocab-parallel numerics),
``forking`` (the paper's token selection and clipped surrogate, and its Megatron plumbing).
"""

__version__ = "0.1.0"
