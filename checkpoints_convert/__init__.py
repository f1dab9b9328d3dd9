"""Convert Qwen3 checkpoints between Hugging Face folders and Megatron distributed checkpoints
(any TP/PP), through the one weight mapping in ``megatron_fork.models.hf_mapping``.

``python -m checkpoints_convert hf-to-mcore|mcore-to-hf ...``; see ``cli.py``.
"""
