"""The actor's process groups and optimizer as Megatron-LM sets them up: every Megatron group
waits ``collective_timeout_minutes`` (not Megatron's 30-minute default), and weight decay
follows Megatron's ``wd_mult`` (none on norms and biases)."""

from datetime import timedelta

import pytest
import torch

from tests.support.distributed import run_distributed
from tests.support.hf_folders import write_hf_folder

TIMEOUT_MINUTES = 7


def _timeout(group) -> timedelta:
    return group._get_backend(torch.device("cpu")).options._timeout


def _groups_worker(rank, world):
    from megatron.core import parallel_state as ps

    from megatron_fork.trainer.actor import init_parallel
    from megatron_fork.trainer.trainer_config import ParallelConfig

    init_parallel(ParallelConfig(tensor_parallel=2, collective_timeout_minutes=7), seed=0)
    groups = {
        "tp": ps.get_tensor_model_parallel_group(),
        "pp": ps.get_pipeline_model_parallel_group(),
        "dp": ps.get_data_parallel_group(),
        "dp_cp": ps.get_data_parallel_group(with_context_parallel=True),
        "cp": ps.get_context_parallel_group(),
        "mp": ps.get_model_parallel_group(),
        "dp_gloo": ps.get_data_parallel_group_gloo(),
    }
    timeouts = {name: _timeout(group) for name, group in groups.items()}
    assert all(t == timedelta(minutes=TIMEOUT_MINUTES) for t in timeouts.values()), timeouts


def test_megatron_groups_get_the_collective_timeout():
    run_distributed(_groups_worker, 2)


def _decay_worker(rank, world, model_dir):
    from megatron_fork.trainer.actor import build_actor, init_parallel, optimizer_step, zero_grads
    from megatron_fork.trainer.trainer_config import OptimizerSettings, ParallelConfig

    init_parallel(ParallelConfig(), seed=0)
    lr, decay = 0.1, 0.5
    actor = build_actor(model_dir, ParallelConfig(), OptimizerSettings(lr=lr, weight_decay=decay))
    before = {n: p.detach().clone() for n, p in actor.model.module.named_parameters()}
    zero_grads(actor)  # zero gradients: Adam moves nothing, only the decoupled decay acts
    optimizer_step(actor)
    after = dict(actor.model.module.named_parameters())
    norms = [n for n in before if "layernorm" in n or n.endswith("final_layernorm.weight")]
    linears = [n for n in before if before[n].dim() == 2]
    assert norms and linears
    for name in norms:  # Megatron's wd_mult = 0: not decayed
        torch.testing.assert_close(after[name].detach(), before[name], rtol=0, atol=0)
    for name in linears:  # decoupled decay: w <- w (1 - lr * wd)
        expected = before[name] * (1 - lr * decay)
        torch.testing.assert_close(after[name].detach(), expected, rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("decay") / "model"
    write_hf_folder(directory)
    return directory


def test_weight_decay_spares_norms_and_decays_matrices(hf_model):
    run_distributed(_decay_worker, 1, str(hf_model))
