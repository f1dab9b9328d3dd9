"""The actor side of training: Megatron plumbing around the forking-token loss."""
