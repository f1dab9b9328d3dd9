"""A tiny GPT trained with SFT steps under Megatron DDP and Megatron's optimizer (plain or
distributed), each DP rank taking its own share of every step's data: the common part of the
distributed-optimizer and checkpoint tests (call inside a rank's worker, after
``init_megatron``)."""

import torch

VOCAB, SEQ = 64, 12
PAIRS_PER_STEP = 8
"""(prompt, completion) pairs of one optimizer step, split over the DP ranks."""
MICRO_BATCH = 2


def build(tp: int, seed: int, distributed_optimizer: bool, clip_grad: float = 1.0):
    """(model, DDP wrapper, optimizer) with weights drawn from ``seed``."""
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_fork.models.gpt import GPTShape, build_gpt_model

    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    model = build_gpt_model(GPTShape(vocab_size=VOCAB), tp)
    model.config.finalize_model_grads_func = finalize_model_grads
    ddp_config = DistributedDataParallelConfig(use_distributed_optimizer=distributed_optimizer)
    ddp = DistributedDataParallel(model.config, ddp_config, model)
    config = OptimizerConfig(
        lr=1e-2, clip_grad=clip_grad, use_distributed_optimizer=distributed_optimizer
    )
    return model, ddp, get_megatron_optimizer(config, [ddp])


def _step_pairs(step: int) -> list[tuple[list[int], list[int]]]:
    gen = torch.Generator().manual_seed(100 + step)  # the data of optimizer step `step`
    return [
        (
            torch.randint(0, VOCAB, (3,), generator=gen).tolist(),
            torch.randint(0, VOCAB, (8,), generator=gen).tolist(),
        )
        for _ in range(PAIRS_PER_STEP)
    ]


def train_step(ddp, optimizer, step: int) -> None:
    """Optimizer step ``step`` on this DP rank's share of its pairs (the loss is the token mean
    over all ranks, so any DP size trains on the same step)."""
    from megatron.core import parallel_state as ps

    from megatron_fork.trainer.parallel_groups import LossGroups
    from megatron_fork.trainer.sft_step import sft_forward_backward_step, sft_microbatch

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    per_rank = PAIRS_PER_STEP // dp
    mine = _step_pairs(step)[dp_rank * per_rank : (dp_rank + 1) * per_rank]
    shards = [
        sft_microbatch(mine[i : i + MICRO_BATCH], SEQ, 0) for i in range(0, per_rank, MICRO_BATCH)
    ]
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    sft_forward_backward_step(ddp, shards, LossGroups.from_parallel_state())
    assert optimizer.step()[0]


def full_params(model) -> dict[str, torch.Tensor]:
    """Every parameter gathered over TP (a collective: every TP rank calls it)."""
    from megatron.core import parallel_state as ps

    from megatron_fork.models.tp_sharding import gather_full

    group = ps.get_tensor_model_parallel_group()
    return {name: gather_full(p, group).clone() for name, p in model.named_parameters()}
