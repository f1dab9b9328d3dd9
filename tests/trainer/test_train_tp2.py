"""A real Qwen3-style Megatron GPTModel trains with the forking-token loss at TP=2 on CPU.

One fixed batch: the old-logprob pass gives old log-probs and the step's top-20% selection,
then 20 optimizer steps (Megatron DDP + Megatron's optimizer) push the clipped surrogate down.

Multi-rank tests assert inside each rank's worker (``_..._worker``); ``run_distributed``
re-raises the first failing rank's error in the test.
"""

import torch

from megatron_fork.forking import ForkingLossConfig
from tests.support.distributed import run_distributed
from tests.support.megatron_setup import init_megatron, wrap_ddp
from tests.support.step_data import make_step

STEPS = 20
NUM_MICROBATCHES = 2
MICRO_BATCH_SIZE = 2
SEQ_LEN = 16


def _train_worker(rank, world, step, out_path):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_fork.models.gpt import GPTShape, build_gpt_model
    from megatron_fork.trainer.actor_step import (
        forward_backward_step,
        old_logprob_pass,
        prepare_step,
    )
    from megatron_fork.trainer.parallel_groups import LossGroups
    from megatron_fork.trainer.policy_batch import PolicyMicroBatch

    init_megatron(tp=2, seed=0)
    model = build_gpt_model(GPTShape(vocab_size=64, hidden_size=32, num_layers=2), 2)
    ddp_model = wrap_ddp(model)
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-4, weight_decay=0.0, clip_grad=1.0), [ddp_model]
    )
    config = ForkingLossConfig()  # the paper's setting: top 20% over the step
    groups = LossGroups.from_parallel_state()

    def microbatch(m, old_logprob):
        rows = torch.arange(m * MICRO_BATCH_SIZE, (m + 1) * MICRO_BATCH_SIZE)
        return PolicyMicroBatch(
            tokens=step["tokens"][rows],
            position_ids=torch.arange(SEQ_LEN).expand(MICRO_BATCH_SIZE, SEQ_LEN),
            target=step["target"][rows],
            valid_mask=step["valid"][rows],
            old_logprob=old_logprob,
            advantages=step["advantages"][rows].float(),
            token_order=step["order"][rows],
        )

    placeholder = torch.zeros(MICRO_BATCH_SIZE, SEQ_LEN)
    shards = [microbatch(m, placeholder) for m in range(NUM_MICROBATCHES)]
    old = old_logprob_pass(ddp_model, shards, config, groups)
    shards = [microbatch(m, o.logprob) for m, o in enumerate(old)]
    prepared = prepare_step(ddp_model, config, shards, old, groups)

    losses = []
    for _ in range(STEPS):
        ddp_model.zero_grad_buffer()
        optimizer.zero_grad()
        outputs = forward_backward_step(ddp_model, prepared, groups)
        losses.append(float(sum(o["loss"] for o in outputs)))
        update_ok, _, _ = optimizer.step()
        assert update_ok
    if rank == 0:
        torch.save(torch.tensor(losses), out_path)


def test_qwen3_style_gpt_trains_at_tp2(tmp_path):
    step = make_step(NUM_MICROBATCHES * MICRO_BATCH_SIZE, SEQ_LEN, 64, seed=3)
    out_path = tmp_path / "losses.pt"
    run_distributed(_train_worker, 2, step, str(out_path))
    losses = torch.load(out_path, weights_only=True)
    assert losses.shape == (STEPS,)
    assert torch.isfinite(losses).all()
    # At step 0 the ratio is 1, so the loss is -(1/N) * sum of the selected advantages; training
    # must push it clearly lower, and the last steps must sit below the first ones.
    assert losses[-1] < losses[0] - 0.1 * abs(losses[0]), losses.tolist()
    assert losses[-5:].mean() < losses[:5].mean(), losses.tolist()
