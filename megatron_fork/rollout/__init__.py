"""Rollout engines: the protocol the trainer talks to, and engines behind it (torch on CPU).
Rollout code never imports Megatron."""
