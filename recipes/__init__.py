"""Run recipes: Python functions that build the run configs (the embedded CPU default here;
the NeMo-Run launch recipes for Qwen3 on Slurm build the same configs at scale)."""
