"""GRPO group advantages: each response's reward against the other responses to its prompt."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AdvantageConfig:
    normalize_by_std: bool = True
    """Divide by the group's standard deviation (GRPO/DAPO); False = mean-centred only
    (Dr. GRPO), which keeps easy and hard prompts on the same scale."""
    epsilon: float = 1e-6
    """Added to the standard deviation, so a group of equal rewards gives zero advantages."""


def group_advantages(rewards: torch.Tensor, config: AdvantageConfig = AdvantageConfig()):
    """[num_prompts, G] rewards -> [num_prompts, G] advantages, (r - mean) / (std + eps).

    The standard deviation is the unbiased one (Bessel), as verl's GRPO computes it; a group of
    one response has advantage 0.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_prompts, G], got {tuple(rewards.shape)}")
    rewards = rewards.to(torch.float32)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if rewards.shape[1] < 2:
        return torch.zeros_like(rewards)
    if not config.normalize_by_std:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + config.epsilon)


def token_advantages(advantages: torch.Tensor, valid_mask: torch.Tensor) -> torch.Tensor:
    """[n] per-response advantages over [n, s] response masks -> [n, s] (0 off the response)."""
    if valid_mask.dim() != 2 or valid_mask.shape[0] != advantages.shape[0]:
        raise ValueError(
            f"valid_mask {tuple(valid_mask.shape)} must be [n, s] over {advantages.shape[0]} "
            "responses."
        )
    return torch.where(valid_mask, advantages[:, None].to(torch.float32), 0.0)
