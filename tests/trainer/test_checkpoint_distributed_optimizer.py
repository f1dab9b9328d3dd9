"""Checkpoints of Megatron's distributed optimizer (``dp_reshardable``, see
``trainer.checkpoint``): saved at DP=2, a resume's next step is bit-exact with the
uninterrupted run's (which also reads the index through ``dcp_metadata``'s allowlist); the
optimizer state resumes at another DP size; the weights load at another TP layout; and a resume
of the optimizer state at another TP layout is refused by name.

Multi-rank tests assert inside each rank's worker; ``run_distributed`` re-raises the first
failing rank's error in the test.
"""

import pytest
import torch

from tests.support.distributed import run_distributed
from tests.support.megatron_setup import init_megatron
from tests.support.sft_training import build, full_params, train_step


def _uninterrupted_worker(rank, world, root, out):
    from megatron_fork.trainer.checkpoint import save_checkpoint

    init_megatron()
    model, ddp, optimizer = build(tp=1, seed=0, distributed_optimizer=True)
    for step in (1, 2):
        train_step(ddp, optimizer, step)
    save_checkpoint(root, 2, ddp, optimizer, {"consumed_prompts": 16})
    at_save = full_params(model)
    train_step(ddp, optimizer, 3)
    if rank == 0:
        torch.save({"at_save": at_save, "after_3": full_params(model)}, out)


def _resume_worker(rank, world, root, out):
    from megatron_fork.trainer.checkpoint import latest_checkpoint, load_checkpoint

    init_megatron()
    model, ddp, optimizer = build(tp=1, seed=123, distributed_optimizer=True)  # the load wins
    assert load_checkpoint(latest_checkpoint(root), ddp, optimizer)["consumed_prompts"] == 16
    train_step(ddp, optimizer, 3)
    expected = torch.load(out, weights_only=True)["after_3"]
    for name, tensor in full_params(model).items():
        if world == 2:  # the uninterrupted run's layout: bit-exact
            assert torch.equal(tensor, expected[name]), f"{name} differs after resuming"
        else:  # DP=1 sums the micro-batches' gradients in another order
            torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6)


def _other_tp_worker(rank, world, root, out):
    from megatron_fork.trainer.checkpoint import checkpoint_dir, load_checkpoint, load_model_weights

    init_megatron(tp=2)
    model, ddp, optimizer = build(tp=2, seed=7, distributed_optimizer=True)
    with pytest.raises(ValueError, match="TP/PP layout it was saved at"):
        load_checkpoint(checkpoint_dir(root, 2), ddp, optimizer)
    load_model_weights(checkpoint_dir(root, 2), ddp)  # saved at TP=1 x DP=2, read at TP=2
    expected = torch.load(out, weights_only=True)["at_save"]
    for name, tensor in full_params(model).items():
        assert torch.equal(tensor, expected[name]), f"{name} differs at TP=2"


def test_distributed_optimizer_resume_is_exact_and_reshards(tmp_path):
    root, out = tmp_path / "ckpt", tmp_path / "params.pt"
    run_distributed(_uninterrupted_worker, 2, str(root), str(out))
    run_distributed(_resume_worker, 2, str(root), str(out))
    run_distributed(_resume_worker, 1, str(root), str(out))  # DP=2 -> DP=1
    run_distributed(_other_tp_worker, 2, str(root), str(out))
