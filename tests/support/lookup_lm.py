"""A language model whose logits are parameters: one row of a [tokens, V/TP] table per token.

Token id i (the token's canonical order in the step) looks up row i, so the gradient w.r.t. the
table is exactly the gradient w.r.t. the logits. It has no attention, so it runs under context
parallelism on CPU, where Megatron's local attention cannot; everything around it (schedule,
DDP, finalize_model_grads, loss) is the real Megatron-Core.
"""

import torch
from megatron.core.enums import ModelType
from megatron.core.transformer import TransformerConfig

from megatron_fork.backends.cpu.config import CPU_TRANSFORMER_OVERRIDES


class LookupLM(torch.nn.Module):
    def __init__(self, table_shard: torch.Tensor, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.model_type = ModelType.encoder_or_decoder
        self.table = torch.nn.Parameter(table_shard.clone())  # [tokens, V/TP]

    def set_input_tensor(self, tensor):  # schedule API; a single stage has no input tensor
        pass

    def forward(self, tokens, position_ids, attention_mask, labels=None, packed_seq_params=None):
        return self.table[tokens]  # [b, s, V/TP]: no attention, so packing changes nothing


def lookup_config(tp: int, cp: int, per_token: bool) -> TransformerConfig:
    """A TransformerConfig carrying the parallel sizes and loss contract for the schedule."""
    return TransformerConfig(
        num_layers=1,
        hidden_size=8,
        num_attention_heads=2,
        tensor_model_parallel_size=tp,
        context_parallel_size=cp,
        calculate_per_token_loss=per_token,
        **CPU_TRANSFORMER_OVERRIDES,
    )
