"""What one standalone evaluation is: the model, the prompt file, the sampling protocol, the
engine and where results go. The defaults are the paper's validation protocol (PAPER.md:
temperature 1.0, top_p 0.7, avg@32, responses up to 20480 tokens) with the trainer's eval seed,
so a run's own evaluation and this one draw alike."""

from dataclasses import asdict, dataclass

from megatron_fork.rl.rl_config import EvalConfig

PAPER_K = 32
PAPER_TEMPERATURE = 1.0
PAPER_TOP_P = 0.7
PAPER_MAX_NEW_TOKENS = 20480

RESULT_KEYS = ("model", "prompts", "k", "temperature", "top_p", "top_k", "max_new_tokens", "seed")
"""The settings a sample's result depends on: a resume refuses results written under others.
(The engine, batch sizes and workers change how, not what, is sampled.)"""


class EvalSetupError(ValueError):
    """A bad model, prompt file, output folder or setting: the message names it and the fix."""


@dataclass(frozen=True)
class EvalSettings:
    model: str
    """A Hugging Face folder, or a Megatron checkpoint (a trainer's ``checkpoints/step_N``, or
    one ``checkpoints_convert hf-to-mcore`` wrote) with its ``hf/`` config and tokenizer."""
    prompts: str
    """An AIME/MATH-style JSONL, JSON or parquet file (``data.loaders.load_aime``)."""
    out: str
    """Folder of ``run.json``, ``samples.jsonl`` and ``summary.json``."""
    engine: str = "torch"
    """A name in ``eval.engines.ENGINES``: "torch" (in this process) or "sglang" (servers)."""
    server_urls: tuple[str, ...] = ()
    """The servers of a server engine (they serve the model themselves)."""
    k: int = PAPER_K
    """Samples per prompt: avg@k and pass@k."""
    temperature: float = PAPER_TEMPERATURE
    top_p: float = PAPER_TOP_P
    top_k: int = -1
    max_new_tokens: int = PAPER_MAX_NEW_TOKENS
    seed: int = EvalConfig().seed
    """Sample j of prompt p is seeded as the trainer's evaluation seeds it (``requests.py``)."""
    max_prompts: int | None = None
    """Evaluate the first this-many prompts of the file (the trainer's ``eval.max_prompts``)."""
    prompts_per_batch: int = 8
    """Prompts generated together; results are saved after each batch (what a kill can lose)."""
    engine_batch_size: int = 256
    """Requests the torch engine decodes together."""
    request_timeout_s: float = 3600.0
    """A server engine's limit on one generate call."""
    reward_workers: int = 2
    reward_time_limit_s: float = 5.0
    restart: bool = False
    """Discard earlier results in ``out`` instead of resuming them."""
    progress: bool = True

    def __post_init__(self):
        checks = (
            (self.k >= 1, f"k must be >= 1, got {self.k}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.prompts_per_batch >= 1, "prompts_per_batch must be >= 1"),
            (self.engine_batch_size >= 1, "engine_batch_size must be >= 1"),
            (self.reward_workers >= 1, "reward_workers must be >= 1"),
            (self.max_prompts is None or self.max_prompts >= 1, "max_prompts must be >= 1"),
            (self.k < 10**4, f"k must be < 10000 (a request id holds 4 digits), got {self.k}"),
        )
        for ok, message in checks:
            if not ok:
                raise EvalSetupError(message)
        self._check_sampling()

    def _check_sampling(self) -> None:
        """The sampling values, refused before any model loads (SamplingParams' own checks)."""
        from megatron_fork.rollout.types import SamplingParams

        try:
            SamplingParams(
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=self.top_k,
                max_new_tokens=self.max_new_tokens,
            )
        except ValueError as error:
            raise EvalSetupError(f"sampling settings: {error}") from None

    def result_settings(self) -> dict:
        """The settings results depend on (``RESULT_KEYS``), for ``run.json`` and the summary."""
        values = asdict(self)
        return {key: values[key] for key in RESULT_KEYS}
