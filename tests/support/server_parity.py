"""Rollout servers against the trainer after a weight sync: the trainer's own log-probs of the
servers' samples (every rank calls these; the comparison happens on the last pipeline stage)."""

import torch
import torch.distributed as dist


def perturb_(model, seed: int) -> None:
    """A stand-in for an optimizer step: the weights change. The same seed on every rank keeps
    the parameters TP ranks replicate (norms) identical, as a real step does."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


def trainer_logprobs(model, samples, vocab: int):
    """The trainer's log-prob of each sample's output tokens on the last stage, else None."""
    from tests.support.megatron_logits import trainer_logprob_entropy

    rows = [list(s.prompt_ids) + list(s.output_ids) for s in samples]
    width = max(map(len, rows)) + 1
    tokens = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    result = trainer_logprob_entropy(model, tokens, torch.roll(tokens, -1, dims=1), vocab)
    if result is None:
        return None
    logprob = result[0]  # [b, s]
    return [
        logprob[i, len(s.prompt_ids) - 1 : len(s.prompt_ids) - 1 + len(s.output_ids)]
        for i, s in enumerate(samples)
    ]


def assert_samples_match_trainer(model, vocab: int, per_server, version: int, max_abs: float):
    """Collective: rank 0's ``per_server`` samples (a list per server, None elsewhere) were made
    at ``version`` and their log-probs are the trainer's within ``max_abs``."""
    box = [per_server]
    dist.broadcast_object_list(box, src=0)
    for samples in box[0]:
        assert all(s.weight_version == version for s in samples)
        expected = trainer_logprobs(model, samples, vocab)
        if expected is None:  # not the last stage
            continue
        for sample, trainer in zip(samples, expected, strict=True):
            error = (torch.tensor(sample.output_logprobs) - trainer).abs().max().item()
            assert error <= max_abs, f"version {version}: {error:.2e}"
