"""What the trainer and a rollout engine exchange. Field meanings follow sglang's /generate
(``sampling_params``, ``output_ids``, ``meta_info.finish_reason``, ``output_token_logprobs``,
``weight_version``), so an sglang engine maps onto them one to one."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

GREEDY_TEMPERATURE = 1e-6
"""Below this temperature sampling is greedy (as sglang)."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    """softmax(logits / T); below GREEDY_TEMPERATURE: argmax."""
    top_p: float = 1.0
    """Nucleus: sample among the smallest set of tokens whose probability reaches top_p."""
    top_k: int = -1
    """Sample among the k most likely tokens; -1 = all."""
    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = ()
    """Generation stops after emitting one of these (it is kept in ``output_ids``)."""
    seed: int | None = None
    """Per-request seed: the same request and seed give the same sample. None = a fresh draw
    on every call (the trainer sets seeds from step, prompt and sample index for replays)."""
    high_entropy_temperature: float | None = None
    """Two-temperature decoding (the paper's experiment): at a position whose entropy (of the
    untempered distribution) is >= ``entropy_threshold``, sample at this temperature, else at
    ``temperature``. None = one temperature. The in-process engine serves it; sglang does not."""
    entropy_threshold: float = 0.672
    """The paper's 80th-percentile token entropy of Qwen3-8B."""

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (all) or >= 1, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.high_entropy_temperature is not None and not self.high_entropy_temperature > 0:
            raise ValueError(
                f"high_entropy_temperature must be > 0, got {self.high_entropy_temperature}"
            )


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""


@dataclass(frozen=True)
class FinishReason:
    kind: Literal["stop", "length", "abort"]
    matched: int | None = None
    """The stop token id that ended a ``stop``."""


@dataclass(frozen=True)
class Sample:
    request_id: str
    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    """Generated ids, including a matched stop id."""
    output_logprobs: tuple[float, ...]
    """log softmax(logits / T) of each generated id (before top-p/top-k), as sglang returns."""
    finish_reason: FinishReason
    weight_version: int
    """The engine's weight version when the sample was produced."""


class RolloutEngine(Protocol):
    """What the trainer needs from an engine (torch on CPU, sglang on GPUs)."""

    @property
    def version(self) -> int: ...

    def generate(self, requests: list[GenerationRequest]) -> list[Sample]: ...

    def update_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | None = None
    ) -> None: ...
