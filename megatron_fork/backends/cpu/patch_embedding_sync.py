"""Patch: tied embeddings under pipeline parallelism sync on the CPU.

What: while ``LanguageModule.setup_embeddings_and_output_layer`` runs, ``Tensor.cuda()`` returns
the tensor itself, so the last stage's copy of the tied word embedding stays on the CPU and is
all-reduced with the first stage's over gloo (the rest of the method is unchanged).
Why: with ``share_embeddings_and_output_weights`` and PP > 1 the method moves that copy with
``weight.data = weight.data.cuda()`` before the all-reduce, which raises on a CPU-only torch, so
tied models (e.g. the small Qwen3s) could not be built at PP > 1.
Verified: megatron-core 0.16.1 with torch 2.13.0 (CPU build).
Can go: when the method moves the weight to the model's device instead of CUDA.
"""

import contextlib

import torch
from megatron.core.models.common.language_module.language_module import LanguageModule

NAME = "embedding_sync"


@contextlib.contextmanager
def _cuda_is_identity():
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def apply():
    """Install the patch; return a function that undoes it."""
    original = LanguageModule.setup_embeddings_and_output_layer

    def setup_embeddings_and_output_layer(self):
        with _cuda_is_identity():
            return original(self)

    LanguageModule.setup_embeddings_and_output_layer = setup_embeddings_and_output_layer

    def undo():
        LanguageModule.setup_embeddings_and_output_layer = original

    return undo
