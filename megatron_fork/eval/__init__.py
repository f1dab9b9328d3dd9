"""A standalone evaluator: avg@k and pass@k of a Hugging Face folder or a Megatron checkpoint
on an AIME/MATH-style prompt file, through the torch engine or sglang-protocol servers, with
the trainer's seeds and verifier (``python -m megatron_fork.eval --help``).

``runner.evaluate(EvalSettings(...))`` is the entry point; ``engines.ENGINES`` the engine
choices. Nothing is imported here, so ``python -m megatron_fork.eval`` can set its warning
filters before Megatron-Core is imported."""
