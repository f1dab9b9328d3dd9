"""The trainer offload refuses, on a GPU, an optimizer whose param groups are the model's own
weights (Megatron-Core's FP32Optimizer: fp32 params without the distributed optimizer), whose
offload_to_cpu would move the weights to host before the weight sync (a crash there). Built
with megatron-core's real optimizer classes on a tiny module (the CPU backend on); nothing moves
(``on_gpu`` only switches the check on)."""

import pytest
import torch

from megatron_fork.trainer.trainer_offload import TrainerOffload, holds_model_weights


def _fp32_optimizer():
    from megatron.core.optimizer import OptimizerConfig
    from megatron.core.optimizer.optimizer import ChainedOptimizer, FP32Optimizer

    from megatron_fork.backends.cpu import enable_cpu_backend

    enable_cpu_backend()  # FP32Optimizer allocates its loss scale on "cuda"

    model = torch.nn.Linear(4, 4)
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    config = OptimizerConfig(optimizer="adam", lr=1e-3, bf16=False, fp16=False)
    return model, ChainedOptimizer([FP32Optimizer(inner, config, lambda: None)])


def test_an_fp32_optimizer_over_the_model_weights_is_refused_on_a_gpu():
    model, optimizer = _fp32_optimizer()
    assert holds_model_weights(optimizer)
    with pytest.raises(ValueError, match="precision.params=bf16"):
        TrainerOffload(model, optimizer, "all", on_gpu=True)
    TrainerOffload(model, optimizer, "none", on_gpu=True)  # nothing moves: allowed
    TrainerOffload(model, optimizer, "all", on_gpu=False)  # the CPU backend: counted no-ops
