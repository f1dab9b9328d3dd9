"""Entropy-pattern analysis (the paper's first half) on the same code paths as training: collect
per-token entropies into a token table (generated or given responses), their statistics and
forking pieces, responses rendered by entropy, evolution across checkpoints on the same tokens,
the two-temperature decoding sweep, and one report folder over all of them
(``analysis_report.write_analysis``; CLI ``tools/entropy_report.py``)."""
