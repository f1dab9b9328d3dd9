"""The RL run's configuration: one frozen dataclass per component, composed into ``RLConfig``.

Field names are the override keys (``recipes`` and the CLI map ``section.field=value`` onto
them one to one). Defaults are the paper's recipe where it has one (PAPER.md, "Training
recipe"), e.g. 20480 new tokens; the batch sizes default to small values. The recipes in
``recipes/`` set everything for a given model and machine.
"""

from dataclasses import dataclass, field

from megatron_fork.data.prompt_sets import DataConfig
from megatron_fork.forking.config import ForkingLossConfig
from megatron_fork.rewards.config import MathRewardConfig
from megatron_fork.rl.advantages import AdvantageConfig
from megatron_fork.rl.dynamic_sampling import DynamicSamplingConfig
from megatron_fork.trainer.trainer_config import (
    OptimizerSettings,
    ParallelConfig,
    PrecisionConfig,
    require,
)


@dataclass(frozen=True)
class RolloutConfig:
    prompts_per_step: int = 16
    """Informative prompt groups per rollout step (after dynamic sampling)."""
    samples_per_prompt: int = 8
    """G: responses per prompt (GRPO group)."""
    prompts_per_round: int = 24
    """Prompts generated per dynamic-sampling round (DAPO's generation batch; >= the target)."""
    max_new_tokens: int = 20480
    """The generation cap (L_max); must equal ``reward.max_response_tokens``."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    engine_batch_size: int = 256
    """Requests the torch engine decodes together."""
    engine: str = "torch"
    """"torch": the engine in the trainer's rank-0 process; "server": ``servers`` CPU rollout
    servers in their own processes, driven through sglang's HTTP protocol (the code path of
    sglang engines), or the servers at ``server_urls``."""
    backend: str = "sglang"
    """What the rollout servers speak (``rollout.engine=server``): "sglang" or "vllm" (the
    CPU servers started here speak either, chosen at their start; ``rollout/vllm_client.py``)."""
    placement: str = "disaggregated"
    """Where the engines run: "disaggregated" (their own GPUs; the Qwen3 recipes' engine nodes)
    or "colocated" (the training GPUs, memory handed back and forth every step: engines
    release theirs while the trainer trains and resume it before the weight sync)."""
    trainer_offload: str = "all"
    """Colocated: what the trainer moves off its GPUs around the rollout (the planner's
    ``RolloutPlacement.trainer_offload``): "all" (gradients freed and optimizer state to host
    before the sync, the weights too after it), "optimizer" (keeps the weights) or "none"
    (``trainer/trainer_offload.py``; a counted no-op on the CPU backend)."""
    servers: int = 2
    server_urls: tuple[str, ...] = ()
    """Rollout servers already running (e.g. sglang); none is started or restarted then."""
    request_timeout_s: float = 600.0
    """A server that does not answer a generate call in this time is taken as down."""
    weight_bucket_bytes: int = 512 * 1024 * 1024
    """Weight sync bucket size: bounds the extra memory a sync needs on the sending ranks."""
    fp8: bool = False
    """Servers serve FP8: linear weights are sent as blockwise (128 x 128) e4m3 + scales."""
    weight_backend: str = "gloo"
    """The trainer -> engines collective: "gloo" (CPU servers), "nccl" (sglang on GPUs)."""
    master_address: str = "127.0.0.1"
    """Where each pipeline stage's leader hosts its weight-update group's store, as the engines
    reach it: loopback for local servers; "hostname" for the host name of the process that
    reads it, so leaders on different nodes each name their own (``recipes.train`` sets each
    process's own host name)."""
    engines_start_with_run: bool = False
    """The engines at ``server_urls`` start anew with every run of the trainer (a colocated
    recipe's, started by its own training nodes, ``recipes.colocated_engines``): nothing in
    them was left released by an earlier run, whose record (``released_engines.json``) is
    dropped unread. Without it, engines at ``server_urls`` outlive the trainer and a
    restarted run wakes those it left released (``rollout/released_memory.py``)."""
    server_tp_size: int = 1
    """GPUs per engine at ``server_urls`` (each TP rank joins the weight-update group)."""
    engine_startup_timeout_s: float = 1800.0
    """How long the trainer waits for the servers at ``server_urls`` to become healthy before
    the first weight sync (sglang engines load and capture CUDA graphs for minutes)."""

    def __post_init__(self):
        require(self.engine in ("torch", "server"), "rollout.engine must be 'torch' or 'server'")
        require(self.backend in ("sglang", "vllm"), "rollout.backend: 'sglang' or 'vllm'")
        require(
            self.placement in ("disaggregated", "colocated"),
            "rollout.placement: 'disaggregated' or 'colocated'",
        )
        require(
            self.trainer_offload in ("all", "optimizer", "none"),
            "rollout.trainer_offload: 'all', 'optimizer' or 'none'",
        )
        require(self.servers >= 1, "rollout.servers must be >= 1")
        require(self.server_tp_size >= 1, "rollout.server_tp_size must be >= 1")
        require(self.weight_backend in ("gloo", "nccl"), "rollout.weight_backend: 'gloo' or 'nccl'")
        require(not self.fp8 or self.engine == "server", "rollout.fp8 needs rollout.engine=server")
        require(self.weight_bucket_bytes >= 1, "rollout.weight_bucket_bytes must be >= 1")
        require(self.prompts_per_step >= 1, "rollout.prompts_per_step must be >= 1")
        require(self.samples_per_prompt >= 2, "rollout.samples_per_prompt (G) must be >= 2")
        require(
            self.prompts_per_round >= self.prompts_per_step,
            "rollout.prompts_per_round must be >= rollout.prompts_per_step",
        )


@dataclass(frozen=True)
class EvalConfig:
    every: int = 10
    """Evaluate every this many RL steps (and before the first and after the last); 0 = only
    before and after."""
    samples_per_prompt: int = 4
    """k of avg@k."""
    temperature: float = 1.0
    top_p: float = 0.7
    """The paper's validation sampling: temperature 1.0, top_p 0.7."""
    max_prompts: int | None = None
    """Evaluate on the first this many held-out prompts; None = all."""
    seed: int = 1234
    """Eval sampling seeds derive from it only, so every evaluation draws the same way."""


@dataclass(frozen=True)
class RLConfig:
    base_model: str
    """A Hugging Face model directory (config.json, safetensors weights, tokenizer.json) or a
    Megatron checkpoint with its ``hf/`` files (``checkpoints_convert hf-to-mcore``)."""
    output_dir: str
    steps: int = 40
    """RL (rollout) steps of the run."""
    seed: int = 0
    mini_batches_per_step: int = 2
    """Optimizer steps per rollout step (the batch is split into this many mini-batches)."""
    packing: bool = True
    """Train on packed sequences (THD layout, ``cu_seqlens``): each mini-batch's samples are
    balanced over the DP ranks by tokens and packed back to back into micro-batches of at most
    ``max_tokens_per_microbatch`` positions; attention stays within each sample. False: rows of
    ``micro_batch_size`` samples, each padded to the step's longest (the layout before packing:
    a baseline for benchmarks and parity tests)."""
    max_tokens_per_microbatch: int = 4096
    """Packing's token budget: the packed length of one micro-batch, all CP ranks together (each
    CP rank holds 1 / CP of it). Size it to at least the longest prompt + response: a longer
    sample is trained alone in a micro-batch of its own (counted in ``train/overlong_samples``),
    which may not fit the GPU's memory. ``planning`` checks the budget's memory."""
    micro_batch_size: int = 16
    """Rows per forward/backward micro-batch without packing (``packing=False``)."""
    checkpoint_every: int = 10
    """Save a checkpoint every this many steps (and at the end); 0 = only at the end."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept on disk (the newest)."""
    tensorboard: bool = True
    progress: bool = True
    """A rich progress bar on rank 0."""
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    loss: ForkingLossConfig = field(default_factory=ForkingLossConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    reward: MathRewardConfig = field(default_factory=MathRewardConfig)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)

    def __post_init__(self):
        require(self.steps >= 1, "steps must be >= 1")
        require(self.mini_batches_per_step >= 1, "mini_batches_per_step must be >= 1")
        require(self.micro_batch_size >= 1, "micro_batch_size must be >= 1")
        require(self.max_tokens_per_microbatch >= 1, "max_tokens_per_microbatch must be >= 1")
        require(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")
        samples = self.rollout.prompts_per_step * self.rollout.samples_per_prompt
        require(
            samples % self.mini_batches_per_step == 0,
            f"the step's {samples} samples (prompts_per_step x samples_per_prompt) must split "
            f"into mini_batches_per_step={self.mini_batches_per_step} equal mini-batches",
        )
        require(
            not self.reward.overlong_shaping
            or self.reward.max_response_tokens == self.rollout.max_new_tokens,
            f"reward.max_response_tokens ({self.reward.max_response_tokens}) must equal "
            f"rollout.max_new_tokens ({self.rollout.max_new_tokens}): the overlong shaping "
            "penalises responses near the generation cap",
        )
        require(
            self.rollout.engine_startup_timeout_s < 60 * self.parallel.collective_timeout_minutes,
            f"rollout.engine_startup_timeout_s ({self.rollout.engine_startup_timeout_s:.0f}) must "
            "be shorter than parallel.collective_timeout_minutes: the other ranks wait for rank "
            "0 in a collective meanwhile",
        )
        require(
            self.loss.temperature == self.rollout.temperature,
            f"loss.temperature ({self.loss.temperature}) must equal rollout.temperature "
            f"({self.rollout.temperature}): the ratio compares log-probs at the sampling "
            "temperature",
        )
