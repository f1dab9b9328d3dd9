"""The actor on one CUDA GPU without torchrun: NCCL (gloo has no CUDA collectives for the
distributed optimizer) and Megatron's fused kernels on. Marked ``gpu``: skipped, with the
reason printed, where no CUDA device exists."""

import pytest
import torch

from tests.support.distributed import run_distributed

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _one_process_worker(rank, world):
    import os

    import torch.distributed as dist

    from megatron_fork.models.gpt import GPTShape, build_gpt_model
    from megatron_fork.trainer.actor import init_parallel
    from megatron_fork.trainer.trainer_config import ParallelConfig

    dist.destroy_process_group()  # the helper's gloo group: start as a plain script would
    os.environ.pop("RANK", None)
    init_parallel(ParallelConfig(), seed=0)
    assert dist.get_backend() == "nccl"
    model = build_gpt_model(GPTShape(), on_cpu=False).cuda()
    assert model.config.bias_activation_fusion and model.config.bias_dropout_fusion


def test_one_process_run_on_a_gpu_uses_nccl_and_fusions():
    run_distributed(_one_process_worker, 1)
