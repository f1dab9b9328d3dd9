"""NeMo-Run objects for a recipe: executors (local torchrun, Slurm with a container and an
optional engine node group) and the tasks they run. Only ``recipes`` imports NeMo-Run."""
