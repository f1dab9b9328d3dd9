"""The bring-up kit behind ``tools/gpu_check.py``: one module per group of checks.

- ``core``: what a check needs, is given and returns (no heavy imports: ``--list`` and
  ``--help`` answer at once).
- ``registry``: every check by name, its needs, its subset and its default time limit.
- ``machine``: what this machine has (GPUs, Transformer Engine, sglang) and why a check skips.
- ``runner`` / ``worker``: each check in its own process group with a time limit.
- ``report``: the pass/fail table and the JSON file.
- checks on one GPU: ``tiny_demo`` (the CPU default on CUDA in bf16), ``op_check`` (the
  log-prob/entropy op against Megatron's ``vocab_parallel_cross_entropy``), ``old_pass_check``
  (the old-logprob pass's peak memory with and without autograd).
- checks on one 8-GPU node: ``qwen3_check`` (each Qwen3 recipe, few layers, against one sglang
  engine), with ``kit_layout``, ``kit_model``, ``engine``, ``run_metrics``, ``processes``.
"""
