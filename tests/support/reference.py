"""Plain single-process PyTorch reference of the whole forking-token step, in fp64.

Independent of the library's numerics: log_softmax for log-probs and entropy, a sort for the
selection, the loss written out from its definition.
"""

import math
from fractions import Fraction

import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in fp64 (the parity measure of the tests)."""
    actual, expected = actual.to(torch.float64), expected.to(torch.float64)
    scale = expected.abs().max().clamp(min=1e-30)
    return float((actual - expected).abs().max() / scale)


def logprob_entropy(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0):
    """[..., V] fp64 logits -> (logprob of target, entropy), plain log_softmax."""
    log_p = torch.log_softmax(logits / temperature, dim=-1)
    logprob = log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return logprob, entropy


def exact_k(rho: float, n: int) -> int:
    """ceil(rho * n) with rho taken as the decimal it is written as (0.1 * 30 -> 3)."""
    return math.ceil(Fraction(str(rho)) * n)


def select_by_sort(entropy, valid, order, rho, strategy) -> torch.Tensor:
    """Top/bottom k by sorting the valid tokens on (entropy as fp32, order); all = valid.

    One total order, (-entropy, order ascending): top takes its first k, bottom its last k.
    ``order`` None means the flat index.
    """
    if strategy == "all":
        return valid.clone()
    if strategy not in ("top", "bottom"):
        raise ValueError(f"no sort reference for {strategy}")
    h = entropy.detach().to(torch.float32).flatten().tolist()
    o = list(range(len(h))) if order is None else order.flatten().tolist()
    idx = valid.flatten().nonzero().flatten().tolist()
    ranked = sorted(idx, key=lambda i: (-h[i], o[i]))
    k = exact_k(rho, len(idx))
    chosen = ranked[:k] if strategy == "top" else ranked[len(ranked) - k :]
    mask = torch.zeros(len(h), dtype=torch.bool)
    mask[chosen] = True
    return mask.view(valid.shape)


def policy_loss(
    logprob, old_logprob, advantages, selected, normalizer, cfg, entropy, ref=None, valid=None
):
    """-(1/N) sum over selected of the DAPO per-token objective, plus the KL and entropy terms:
    on the selected tokens under N (``regularizer_tokens="selected"``), or a token mean over
    ``valid`` (``"response"``, verl's agg_loss over the response mask)."""
    ratio = torch.exp(logprob - old_logprob)
    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
    objective = torch.minimum(ratio * advantages, ratio.clamp(lo, hi) * advantages)
    if cfg.dual_clip_c is not None:
        dual = torch.maximum(objective, cfg.dual_clip_c * advantages)
        objective = torch.where(advantages < 0, dual, objective)
    regularizer = torch.zeros_like(objective)
    if cfg.kl_coef:
        d = ref - logprob
        regularizer = regularizer - cfg.kl_coef * (torch.exp(d) - d - 1)
    if cfg.entropy_coef:
        regularizer = regularizer + cfg.entropy_coef * entropy
    if cfg.regularizer_tokens == "selected" or not (cfg.kl_coef or cfg.entropy_coef):
        return -((objective + regularizer) * selected).sum() / max(int(normalizer), 1)
    if valid is None:
        raise ValueError("regularizer_tokens=response needs the valid mask")
    policy = -(objective * selected).sum() / max(int(normalizer), 1)
    return policy - (regularizer * valid).sum() / max(int(valid.sum()), 1)


def reference_loss(logits, step, cfg, num_microbatches, dp_size):
    """The step's loss from full logits [G, S, V] (fp64, may carry autograd), its selection and
    the old/reference log-probs it used (current log-probs plus fixed noise)."""
    from tests.support.step_data import scope_units

    g, s = step["target"].shape
    logprob, entropy = logprob_entropy(logits, step["target"], cfg.temperature)
    old = logprob.detach() + step["old_noise"]
    ref = logprob.detach() + step["ref_noise"]
    selected = torch.zeros_like(step["valid"])
    for unit in scope_units(g, num_microbatches, dp_size, cfg.scope):
        selected[unit] = select_by_sort(
            entropy.detach()[unit], step["valid"][unit], step["order"][unit], cfg.rho, cfg.strategy
        )
    n = step["valid"].sum() if cfg.normalizer == "all_tokens" else selected.sum()
    loss = policy_loss(
        logprob, old, step["advantages"], selected, n, cfg, entropy, ref, step["valid"]
    )
    return {
        "loss": loss,
        "normalizer": n.to(torch.float64),
        "selected": selected,
        "old_logprob": old.float(),
        "ref_logprob": ref.float(),
    }
