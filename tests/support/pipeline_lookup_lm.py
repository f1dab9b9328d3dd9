"""A two-stage language model without attention, for pipeline x context parallel tests on CPU.

Stage 0 looks up a hidden vector per token (``embedding`` [tokens, H]); stage 1 maps it to
vocab-parallel logits with Megatron's ``ColumnParallelLinear`` (weight [V/TP, H]). Megatron's
local attention has no context parallelism, so this is how the pipeline schedule's p2p shapes,
the CP split and the loss are tested together; the schedule, DDP and finalize_model_grads are
the real ones.
"""

import torch
from megatron.core import tensor_parallel
from megatron.core.enums import ModelType
from megatron.core.transformer import TransformerConfig

from megatron_fork.backends.cpu.config import CPU_TRANSFORMER_OVERRIDES


class PipelineLookupLM(torch.nn.Module):
    def __init__(self, config, embedding, output_shard, pre_process, post_process):
        super().__init__()
        self.config = config
        self.model_type = ModelType.encoder_or_decoder
        self.pre_process, self.post_process = pre_process, post_process
        self.share_embeddings_and_output_weights = False
        self.input_tensor = None
        if pre_process:
            self.embedding = torch.nn.Parameter(embedding.clone())  # [tokens, H]
        if post_process:
            vocab = output_shard.shape[0] * config.tensor_model_parallel_size
            self.output_layer = tensor_parallel.ColumnParallelLinear(
                config.hidden_size,
                vocab,
                config=config,
                init_method=torch.nn.init.zeros_,
                bias=False,
                gather_output=False,
            )
            with torch.no_grad():
                self.output_layer.weight.copy_(output_shard)  # [V/TP, H]

    def set_input_tensor(self, tensor):
        self.input_tensor = tensor[0] if isinstance(tensor, list) else tensor

    def forward(self, tokens, position_ids, attention_mask, labels=None):
        if self.pre_process:
            hidden = self.embedding[tokens].transpose(0, 1)  # [s, b, H]
        else:
            hidden = self.input_tensor
        if not self.post_process:
            return hidden
        logits, _ = self.output_layer(hidden)  # [s, b, V/TP]
        return logits.transpose(0, 1)  # [b, s, V/TP]


def pipeline_lookup_config(tp: int, pp: int, cp: int, hidden: int) -> TransformerConfig:
    return TransformerConfig(
        num_layers=pp,
        hidden_size=hidden,
        num_attention_heads=1,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        context_parallel_size=cp,
        pipeline_dtype=torch.float32,
        **CPU_TRANSFORMER_OVERRIDES,
    )
