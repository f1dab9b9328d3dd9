"""The RL run around the trainer: its config, the loop, rank 0's controller and rollout phase, a
step's samples on their way to micro-batches (scatter over DP ranks, layout, slicing), the
engines' placement, logs and the run's lifecycle (lock, stop, resume); and the supervised warm
start that makes the tiny base. Megatron's side (actor, forward/backward, checkpoints, the
weights out) is ``megatron_fork.trainer``."""
