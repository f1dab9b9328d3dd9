"""Model builders: Megatron GPTModel in the Qwen3 style."""
