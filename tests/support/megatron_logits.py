"""Full-vocabulary logits of a Megatron GPTModel split over TP and PP, for parity tests: the
pipeline's forward activations travel stage to stage by point-to-point sends (a plain
forward-only pipeline), and the last stage gathers its vocab-parallel logits over TP."""

import torch
import torch.distributed as dist

from tests.support.megatron_setup import gather_vocab


def full_logits(model, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor | None:
    """[b, s, vocab_size] logits on the last pipeline stage (TP padding cut), None elsewhere.
    Every rank of the model calls it."""
    from megatron.core import parallel_state as ps

    batch, seq = tokens.shape
    positions = torch.arange(seq).expand(batch, seq)
    if not ps.is_pipeline_first_stage():
        hidden = torch.empty(seq, batch, model.config.hidden_size)
        dist.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
        model.set_input_tensor(hidden)
    with torch.no_grad():
        output = model(tokens, positions, None)
    if not ps.is_pipeline_last_stage():
        dist.send(output.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
        return None
    return gather_vocab(output, ps.get_tensor_model_parallel_group())[..., :vocab_size]


def trainer_logprob_entropy(model, tokens: torch.Tensor, target: torch.Tensor, vocab_size: int):
    """(log-prob, entropy) [b, s] of ``target`` as the trainer computes them (its old-logprob
    pass through Megatron's schedule, TP padding left out) on the last pipeline stage; None
    elsewhere. Every rank of the model calls it."""
    from megatron_fork.forking import ForkingLossConfig
    from megatron_fork.trainer.actor_step import old_logprob_pass
    from megatron_fork.trainer.parallel_groups import LossGroups
    from megatron_fork.trainer.policy_batch import PolicyMicroBatch

    batch, seq = tokens.shape
    micro_batch = PolicyMicroBatch(
        tokens=tokens,
        position_ids=torch.arange(seq).expand(batch, seq),
        target=target,
        valid_mask=torch.ones(batch, seq, dtype=torch.bool),
        old_logprob=torch.zeros(batch, seq),
        advantages=torch.zeros(batch, seq),
        token_order=torch.arange(batch * seq).view(batch, seq),
    )
    config = ForkingLossConfig(vocab_size=vocab_size)
    outputs = old_logprob_pass(model, [micro_batch], config, LossGroups.from_parallel_state())
    return None if outputs is None else (outputs[0].logprob, outputs[0].entropy)
