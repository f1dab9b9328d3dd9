"""Choosing the next token of one sequence from its logits: temperature, top-k, top-p, greedy,
with a per-request generator, and the log-prob the trainer will compare against."""

import torch

from megatron_fork.rollout.types import GREEDY_TEMPERATURE, SamplingParams


def _truncate(probs: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Zero the probabilities outside top-k and outside the top-p nucleus: [V] -> [V]."""
    sorted_probs, order = probs.sort(descending=True)
    keep = torch.ones_like(sorted_probs, dtype=torch.bool)
    if top_k > 0:
        keep[top_k:] = False
    if top_p < 1.0:
        before = sorted_probs.cumsum(0) - sorted_probs  # mass of the more likely tokens
        keep &= before < top_p  # the most likely token is always kept
    truncated = torch.zeros_like(probs)
    truncated[order[keep]] = sorted_probs[keep]
    return truncated


def position_temperature(logits: torch.Tensor, params: SamplingParams) -> float:
    """The temperature this position samples at: ``high_entropy_temperature`` where the
    entropy of softmax(logits) reaches ``entropy_threshold`` (two-temperature decoding), else
    ``temperature``."""
    if params.high_entropy_temperature is None:
        return params.temperature
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    entropy = float(-(log_probs.exp() * log_probs).sum())
    high = entropy >= params.entropy_threshold
    return params.high_entropy_temperature if high else params.temperature


def next_token(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    processed_logprobs: bool = False,
) -> tuple[int, float]:
    """(token id, log softmax(logits / T)[token]) for one position's fp32 logits [V].

    The log-prob is of the temperature-scaled distribution before truncation (sglang's default),
    i.e. what the trainer computes; greedy decoding reports T = 1 log-probs.
    ``processed_logprobs``: of the distribution actually sampled from instead, softmax(logits /
    T) renormalised over the tokens top-k/top-p keep (vLLM's ``--logprobs-mode
    processed_logprobs``); the same value when nothing is truncated.
    """
    logits = logits.float()
    temperature = position_temperature(logits, params)
    if temperature < GREEDY_TEMPERATURE:
        token = int(logits.argmax())
        return token, float(torch.log_softmax(logits, -1)[token])
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    probs = _truncate(log_probs.exp(), params.top_k, params.top_p)
    token = int(torch.multinomial(probs, 1, generator=generator))
    if processed_logprobs and (params.top_k > 0 or params.top_p < 1.0):
        return token, float(log_probs[token] - torch.log(probs.sum()))
    return token, float(log_probs[token])
