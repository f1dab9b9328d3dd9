"""How Megatron-Core runs where it runs. ``cpu``: CPU tensors and gloo process groups."""
