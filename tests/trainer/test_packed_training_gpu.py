"""Packed against padded training on one CUDA GPU: Transformer Engine's THD attention where the
image has TE (else the local spec's packed attention on CUDA), NCCL, the GPU fusions, bf16
weights. The CPU parity test (test_packed_training_parity.py) checks the same path at 1e-5 in
fp32; TE's fused kernels need bf16/fp16, and a THD kernel against a padded BSHD one differs by
bf16 rounding, so this tolerance is bf16's (2e-2 relative to the largest value), a check that
the packed layout is computed as the same samples, not a precision test. Marked ``gpu``:
skipped, with the reason printed, where no CUDA device exists. Not yet run on a GPU.
"""

import pytest
import torch

from tests.support.distributed import run_distributed

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

BF16_RTOL = 2e-2


def _gpu_worker(rank, world):
    import os

    import torch.distributed as dist

    from megatron_fork.forking import ForkingLossConfig
    from megatron_fork.models.gpt import GPTShape, build_gpt_model
    from megatron_fork.trainer.actor import device, init_parallel
    from megatron_fork.trainer.parallel_groups import LossGroups
    from megatron_fork.trainer.trainer_config import ParallelConfig
    from tests.support.megatron_setup import wrap_ddp
    from tests.trainer.test_packed_training_parity import VOCAB, check_packed_against_padded

    dist.destroy_process_group()  # the helper's gloo group: start as the trainer does
    os.environ.pop("RANK", None)
    init_parallel(ParallelConfig(), seed=7)
    shape = GPTShape(vocab_size=VOCAB, hidden_size=128, num_layers=2)
    model = build_gpt_model(
        shape, on_cpu=False, params_dtype=torch.bfloat16, transformer_options={"bf16": True}
    )
    ddp_model = wrap_ddp(model.cuda())
    cfg = ForkingLossConfig(vocab_size=VOCAB)
    groups = LossGroups.from_parallel_state()
    check_packed_against_padded(ddp_model, groups, cfg, BF16_RTOL, device())


def test_packed_matches_padded_on_a_gpu():
    run_distributed(_gpu_worker, 1)
