"""The CPU rollout engine behind sglang's HTTP protocol: a real server on loopback, in its own
process, so the trainer's sglang client code runs against it in the suite."""
