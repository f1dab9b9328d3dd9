"""Checkpoints: exact resume (model + optimizer) at TP=2, loading at another layout (TP=1), and
a stale half-written directory never taken for a checkpoint.

Multi-rank tests assert inside each rank's worker (``_..._worker``); ``run_distributed``
re-raises the first failing rank's error in the test.
"""

import pytest
import torch

from tests.support.distributed import run_distributed
from tests.support.megatron_setup import init_megatron, wrap_ddp

VOCAB, SEQ = 64, 12


def _setup(tp, seed):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_fork.models.gpt import GPTShape, build_gpt_model

    init_megatron(tp=tp, seed=seed)
    model = build_gpt_model(GPTShape(vocab_size=VOCAB), tp)
    ddp = wrap_ddp(model)
    optimizer = get_megatron_optimizer(OptimizerConfig(lr=1e-2), [ddp])
    return model, ddp, optimizer


def _train_step(ddp, optimizer, step):
    from megatron_fork.trainer.parallel_groups import LossGroups
    from megatron_fork.trainer.sft_step import sft_forward_backward_step, sft_microbatch

    gen = torch.Generator().manual_seed(100 + step)  # the data of optimizer step `step`
    pairs = [
        (
            torch.randint(0, VOCAB, (3,), generator=gen).tolist(),
            torch.randint(0, VOCAB, (8,), generator=gen).tolist(),
        )
        for _ in range(4)
    ]
    shards = [sft_microbatch(pairs[i : i + 2], SEQ, 0) for i in (0, 2)]
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    sft_forward_backward_step(ddp, shards, LossGroups.from_parallel_state())
    assert optimizer.step()[0]


def _full_params(model):
    from megatron.core import parallel_state as ps

    from megatron_fork.models.tp_sharding import gather_full

    group = ps.get_tensor_model_parallel_group()
    return {name: gather_full(p, group).clone() for name, p in model.named_parameters()}


def _uninterrupted_worker(rank, world, root, out):
    from megatron_fork.trainer.checkpoint import save_checkpoint

    model, ddp, optimizer = _setup(tp=2, seed=0)
    for step in (1, 2):
        _train_step(ddp, optimizer, step)
    save_checkpoint(root, 2, ddp, optimizer, {"consumed_prompts": 8})
    at_save = _full_params(model)
    _train_step(ddp, optimizer, 3)
    if rank == 0:
        torch.save({"at_save": at_save, "after_3": _full_params(model)}, out)
    else:
        _full_params(model)  # the gathers are collectives: every TP rank joins


def _resume_worker(rank, world, root, out):
    from megatron_fork.trainer.checkpoint import latest_checkpoint, load_checkpoint

    model, ddp, optimizer = _setup(tp=2, seed=123)  # other initial weights: the load must win
    state = load_checkpoint(latest_checkpoint(root), ddp, optimizer)
    assert state == {"step": 2, "consumed_prompts": 8}
    _train_step(ddp, optimizer, 3)
    expected = torch.load(out, weights_only=True)["after_3"]
    for name, tensor in _full_params(model).items():
        assert torch.equal(tensor, expected[name]), f"{name} differs after resuming"


def _reshard_worker(rank, world, root, out):
    from megatron_fork.trainer.checkpoint import checkpoint_dir, load_checkpoint

    model, ddp, _ = _setup(tp=1, seed=7)
    load_checkpoint(checkpoint_dir(root, 2), ddp)  # saved at TP=2, read at TP=1
    expected = torch.load(out, weights_only=True)["at_save"]
    for name, tensor in _full_params(model).items():
        assert torch.equal(tensor, expected[name]), f"{name} differs at TP=1"


def test_resume_is_exact_and_loads_at_another_layout(tmp_path):
    root, out = tmp_path / "ckpt", tmp_path / "params.pt"
    run_distributed(_uninterrupted_worker, 2, str(root), str(out))
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002"]
    run_distributed(_resume_worker, 2, str(root), str(out))
    run_distributed(_reshard_worker, 1, str(root), str(out))


def test_half_written_checkpoints_are_never_latest(tmp_path):
    from megatron_fork.trainer.checkpoint import latest_checkpoint, load_checkpoint

    (tmp_path / "step_00000005.tmp").mkdir()  # a save killed midway
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "step_00000003").mkdir()  # a directory without trainer state
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "step_00000003", model=None)
