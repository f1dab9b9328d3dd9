"""Configuration of the forking-token policy loss. Validated on construction, so a bad value
fails on every rank before any collective is entered."""

from dataclasses import dataclass

STRATEGIES = ("top", "bottom", "random", "all")
SCOPES = ("local_microbatch", "global_microbatch", "global_step")
NORMALIZERS = ("all_tokens", "selected_tokens", "microbatch_selected_mean")
REGULARIZER_TOKENS = ("response", "selected")


@dataclass(frozen=True)
class ForkingLossConfig:
    """Which tokens carry the policy gradient, and the DAPO clipped surrogate they carry.

    Defaults follow the paper's equation: top 20% by entropy over the whole optimizer step,
    normalised by all valid response tokens. The public code's variant is
    ``scope="local_microbatch", normalizer="microbatch_selected_mean"``.
    """

    rho: float = 0.2
    """Fraction of valid tokens selected: k = ceil(rho * N_valid) over the scope. In (0, 1]."""
    strategy: str = "top"
    """top: k highest entropy (paper); bottom: k lowest; random: k uniform (seeded); all: DAPO."""
    scope: str = "global_step"
    """Where k and the threshold are taken: local_microbatch (one micro-batch on one DP rank, its
    CP shards together), global_microbatch (one micro-batch across DP and CP), global_step (the
    whole optimizer step across all ranks, from the old-logprob pass's entropies)."""
    normalizer: str = "all_tokens"
    """Loss denominator. all_tokens: the step's valid response tokens (paper); selected_tokens:
    the step's selected tokens; both the global count of the optimizer step.
    microbatch_selected_mean (public code, verl's dynamic batch): a token mean over each
    micro-batch's selected tokens (its CP shards together), weighted by its share of the step's
    rows, rows_m / R (verl: rows_m / the DP rank's rows, then FSDP's mean over DP; the same when
    every DP rank holds R / DP rows, as verl's dispatch makes it)."""
    eps_low: float = 0.2
    """Lower clip: ratio below 1 - eps_low stops the gradient for A < 0."""
    eps_high: float = 0.28
    """Upper clip (DAPO clip-higher): ratio above 1 + eps_high stops the gradient for A > 0."""
    dual_clip_c: float | None = 10.0
    """Dual clip for A < 0: objective floored at c * A. None disables it. Must exceed 1."""
    kl_coef: float = 0.0
    """Weight of the k3 KL to a reference policy (needs reference log-probs). 0 = off."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (subtracted from the loss). 0 = off."""
    regularizer_tokens: str = "response"
    """Tokens the KL and entropy-bonus terms average over. response (the paper's code, verl's
    dp_actor: agg_loss over the response mask, whatever the selection): a token mean over the
    valid response tokens, of the step under all_tokens / selected_tokens, of each micro-batch
    (weighted by its rows, as the surrogate) under microbatch_selected_mean; unselected tokens
    get its gradient. selected: added to the surrogate on the selected tokens only, under its
    normaliser."""
    seed: int = 0
    """Seed of the random strategy (the draw is a fixed function of seed and token order)."""
    temperature: float = 1.0
    """Sampling temperature: entropy and log-probs use softmax(logits / temperature)."""
    chunk_size: int | None = None
    """Tokens per chunk of the log-prob/entropy op (bounds its memory); None = op default."""
    vocab_size: int | None = None
    """True vocabulary size when the model's output is padded past it for TP (Megatron pads to
    a multiple of TP x 128): padded logits are left out of log-probs and entropy, so they match
    the rollout engine's. None = no padding."""

    def __post_init__(self):
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("scope", self.scope, SCOPES)
        _check_choice("normalizer", self.normalizer, NORMALIZERS)
        _check_choice("regularizer_tokens", self.regularizer_tokens, REGULARIZER_TOKENS)
        check_rho(self.rho)
        for name in ("eps_low", "eps_high", "kl_coef", "entropy_coef"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"ForkingLossConfig.{name} must be >= 0, got {value}.")
        if self.eps_low >= 1:
            raise ValueError(f"ForkingLossConfig.eps_low must be < 1, got {self.eps_low}.")
        if self.dual_clip_c is not None and not self.dual_clip_c > 1:
            raise ValueError(
                f"ForkingLossConfig.dual_clip_c must be > 1 (or None to disable), "
                f"got {self.dual_clip_c}."
            )
        if not self.temperature > 0:
            raise ValueError(f"ForkingLossConfig.temperature must be > 0, got {self.temperature}.")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"ForkingLossConfig.vocab_size must be >= 1, got {self.vocab_size}.")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"ForkingLossConfig.chunk_size must be >= 1, got {self.chunk_size}.")

    @property
    def has_regularizer(self) -> bool:
        """True when the KL or the entropy-bonus term is on."""
        return self.kl_coef > 0 or self.entropy_coef > 0


def check_rho(rho: float) -> None:
    if not (isinstance(rho, int | float) and 0 < rho <= 1):
        raise ValueError(f"rho must be in (0, 1], got {rho!r} (0.2 keeps the top 20%).")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {choices}.")
