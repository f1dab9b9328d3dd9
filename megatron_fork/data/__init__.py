"""Prompt data: the synthetic verifiable task, its tokenizer, and loaders for real datasets.

- ``synthetic_task``: a generated task with short chains of thought ending in ``\\boxed{}``.
- ``tokenizer``: a tiny tokenizer built locally, saved as a standard ``tokenizer.json``.
- ``loaders``: DAPO-Math-17K style and AIME-style files (JSONL / parquet) -> ``PromptExample``.
- ``report``: what a loader skipped, counted by reason.

Nothing here downloads; nothing here imports Megatron or torch.
"""
