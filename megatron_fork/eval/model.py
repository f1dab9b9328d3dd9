"""The model under evaluation: a Hugging Face folder or a Megatron checkpoint, opened and
checked (config, tokenizer, weights present) before any engine starts, so a wrong path fails in
a second with the path and the fix rather than minutes into a load."""

from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_fork.analysis.model_source import checkpoint_step, read_source
from megatron_fork.data.tokenizer import SpecialTokenIds, special_token_ids
from megatron_fork.eval.settings import EvalSetupError
from megatron_fork.trainer.checkpoint import is_megatron_checkpoint

WHAT_A_MODEL_IS = (
    "pass a Hugging Face folder (config.json, *.safetensors, tokenizer.json) or a Megatron "
    "checkpoint (a run's checkpoints/step_N, or checkpoints_convert's output)"
)


@dataclass(frozen=True)
class OpenedModel:
    source: str
    kind: str
    """"huggingface" or "megatron"."""
    step: int | None
    """A trainer checkpoint's training step, else None."""
    hf_config: object
    tokenizer: object
    ids: SpecialTokenIds

    def description(self) -> dict:
        return {"path": str(Path(self.source).resolve()), "kind": self.kind, "step": self.step}

    def load_hf_model(self):
        """The weights as a float32 Hugging Face ``Qwen3ForCausalLM`` (eval mode)."""
        if self.kind == "huggingface":
            from transformers import Qwen3ForCausalLM

            return Qwen3ForCausalLM.from_pretrained(self.source, dtype=torch.float32).eval()
        return _megatron_weights_as_hf(self.source)


def open_model_source(source: str) -> OpenedModel:
    path = Path(source)
    if not path.is_dir():
        raise EvalSetupError(f"model {source}: no such folder; {WHAT_A_MODEL_IS}")
    megatron = is_megatron_checkpoint(path)
    if not megatron and not any(path.glob("*.safetensors")):
        raise EvalSetupError(f"model {source}: no *.safetensors weights there; {WHAT_A_MODEL_IS}")
    try:
        hf_config, tokenizer = read_source(source)
    except (OSError, ValueError) as error:
        raise EvalSetupError(f"model {source}: {error}; {WHAT_A_MODEL_IS}") from None
    return OpenedModel(
        source=str(source),
        kind="megatron" if megatron else "huggingface",
        step=checkpoint_step(path),
        hf_config=hf_config,
        tokenizer=tokenizer,
        ids=special_token_ids(tokenizer),
    )


def _megatron_weights_as_hf(source: str):
    """Load the checkpoint into Megatron in this process (gloo, TP=PP=1) and sync it into a
    Hugging Face model through the trainer's mapping, as the trainer fills its engine."""
    import torch.distributed as dist

    from megatron_fork.analysis.model_source import open_model
    from megatron_fork.trainer.actor import init_parallel, shutdown_parallel
    from megatron_fork.trainer.trainer_config import ParallelConfig

    created = not dist.is_initialized()
    init_parallel(ParallelConfig(), seed=0)
    try:
        engine = open_model(source).rollout_engine()
    finally:
        shutdown_parallel(destroy_process_group=created)
    return engine.model
