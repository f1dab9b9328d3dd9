"""Entropy-pattern analysis (the paper's first half): statistics of per-token entropies, the
overlap of high-entropy positions between checkpoints, on the same code paths as training."""
