"""The supervised warm start step: its loss against a plain reference, and a Qwen3 at TP=2
learning the synthetic task's solutions with it.

Multi-rank tests assert inside each rank's worker (``_..._worker``); ``run_distributed``
re-raises the first failing rank's error in the test.
"""

import torch

from megatron_fork.trainer.forward_step import StepLossScaling
from megatron_fork.trainer.parallel_groups import LossGroups
from megatron_fork.trainer.sft_step import sft_loss_func, sft_microbatch
from tests.support.distributed import run_distributed
from tests.support.megatron_setup import init_megatron, wrap_ddp


def test_sft_microbatch_masks_the_completion_only():
    batch = sft_microbatch([([5, 6], [7, 8, 9]), ([4], [3])], seq_len=6, pad_id=0)
    # Row 0: inputs 5 6 7 8 9 pad, targets 6 7 8 9 pad pad; trained where the target is 7 8 9.
    assert batch.tokens[0].tolist() == [5, 6, 7, 8, 9, 0]
    assert batch.target[0].tolist() == [6, 7, 8, 9, 0, 0]
    assert batch.loss_mask[0].tolist() == [False, True, True, True, False, False]
    assert batch.loss_mask[1].tolist() == [True, False, False, False, False, False]


def test_sft_loss_is_the_token_mean_nll():
    batch = sft_microbatch([([5, 6], [7, 8, 9]), ([4], [3])], seq_len=6, pad_id=0)
    logits = torch.randn(2, 6, 11, generator=torch.Generator().manual_seed(0))
    scaling = StepLossScaling(per_token=False, num_microbatches=2, normalizer=torch.tensor(8.0))
    loss, metrics = sft_loss_func(batch, LossGroups(), scaling, None, logits)
    nll = -torch.log_softmax(logits.double(), -1).gather(-1, batch.target[..., None])[..., 0]
    expected = nll[batch.loss_mask].sum() / 8  # the step has 8 trained tokens in all
    torch.testing.assert_close(loss.double() / 2, expected, rtol=1e-6, atol=0)  # schedule's /M
    assert int(metrics["num_tokens"]) == 4


def _sft_worker(rank, world, tokenizer_dir):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from transformers import Qwen3Config

    from megatron_fork.data.synthetic_task import SyntheticTaskConfig, build_splits
    from megatron_fork.data.tokenizer import load_tokenizer, special_token_ids
    from megatron_fork.models.qwen3 import build_qwen3_model
    from megatron_fork.trainer.sft_step import sft_forward_backward_step

    init_megatron(tp=2, seed=0)
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = special_token_ids(tokenizer)
    hf_config = Qwen3Config(
        vocab_size=ids.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
    )
    model = build_qwen3_model(hf_config, 2, vocab_multiple=8)  # 23 tokens -> 32
    ddp_model = wrap_ddp(model)
    optimizer = get_megatron_optimizer(OptimizerConfig(lr=3e-3, clip_grad=1.0), [ddp_model])

    train = build_splits(SyntheticTaskConfig(heldout_size=100)).train[:64]
    pairs = [(tokenizer.encode(e.prompt), tokenizer.encode(e.solution) + [ids.eos]) for e in train]
    shards = [sft_microbatch(pairs[i : i + 16], 48, ids.pad) for i in range(0, 64, 16)]
    groups = LossGroups.from_parallel_state()
    losses = []
    for _ in range(30):
        ddp_model.zero_grad_buffer()
        optimizer.zero_grad()
        outputs = sft_forward_backward_step(ddp_model, shards, groups, hf_config.vocab_size)
        losses.append(float(sum(o["loss"] for o in outputs)))
        assert optimizer.step()[0]
    # Uniform guessing over 23 tokens costs log(23) = 3.1 nats; most solution tokens are
    # copies or separators, so the mean NLL must fall far below it.
    assert abs(losses[0] - 3.1) < 0.6, losses[0]
    assert losses[-1] < 0.5 * losses[0], losses


def test_qwen3_learns_the_task_solutions_at_tp2(tmp_path):
    from megatron_fork.data.tokenizer import build_and_save

    build_and_save(tmp_path)
    run_distributed(_sft_worker, 2, str(tmp_path))
