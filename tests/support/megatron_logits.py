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
