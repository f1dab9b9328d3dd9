"""Megatron's side of training: the actor (process groups, model, optimizer), its settings,
forward steps with the forking-token loss, packed and padded micro-batches, checkpoints, the
memory hand-over around colocated rollouts, and the weights sent to the engines. The RL run
that drives it is ``megatron_fork.rl``."""
