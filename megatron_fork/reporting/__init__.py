"""Reports of finished runs: summaries and plots."""
