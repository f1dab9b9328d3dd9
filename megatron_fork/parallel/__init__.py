"""Small helpers over torch.distributed process groups that numerics take as arguments."""
