"""A rollout engine on plain PyTorch: a Hugging Face causal LM with a KV cache, batched.

The CPU stand-in for sglang, behind the same protocol (``types.RolloutEngine``): prompts of a
batch are left-padded, decoded together with one cached forward per new token, and each request
samples with its own generator (seeded by ``SamplingParams.seed``), so a request gives the same
sample whatever batch it runs in. Weights arrive as Hugging Face-named tensors, as the trainer's
weight mapping streams them.
"""

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from megatron_fork.rollout.sampling import next_token
from megatron_fork.rollout.types import FinishReason, GenerationRequest, Sample


@dataclass
class _Decoding:
    """One request's progress through a batch."""

    request: GenerationRequest
    generator: torch.Generator
    output_ids: list
    logprobs: list
    finish: FinishReason | None = None


class TorchRolloutEngine:
    """``RolloutEngine`` over a Hugging Face ``*ForCausalLM`` module, in this process."""

    def __init__(
        self,
        model,
        max_batch_size: int = 64,
        pad_token_id: int = 0,
        seed: int = 0,
        processed_logprobs: bool = False,
    ):
        """``processed_logprobs``: report the log-probs of the truncated (top-k/top-p)
        distribution, as vLLM's ``processed_logprobs`` mode (``sampling.next_token``)."""
        self.model = model.eval()
        self.processed_logprobs = processed_logprobs
        self.max_batch_size = max_batch_size
        self.pad_token_id = pad_token_id
        self.seed = seed
        self._version = 0
        self._calls = 0  # generate() calls so far: requests without a seed draw anew each call
        self._params = dict(model.named_parameters())
        # transformers 5.x names the KV cache argument "cache"; 4.x "past_key_values".
        forward_args = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"

    @property
    def version(self) -> int:
        return self._version

    def update_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | None = None
    ) -> None:
        """Copy HF-named tensors into the model (any subset, e.g. one bucket of a sync). The
        version changes only when ``version`` is given: pass it with the last bucket, so a
        partly applied sync never reports itself as the new weights (as sglang's
        ``weight_version``). An unknown name or shape raises, naming it."""
        with torch.no_grad():
            for name, tensor in named_tensors:
                param = self._params.get(name)
                if param is None:
                    raise KeyError(f"the rollout model has no parameter {name!r}")
                if param.shape != tensor.shape:
                    raise ValueError(
                        f"{name}: got {tuple(tensor.shape)}, the model has {tuple(param.shape)}"
                    )
                param.copy_(tensor)
        if version is not None:
            self._version = version

    def generate(
        self, requests: list[GenerationRequest], abort: Callable[[], bool] | None = None
    ) -> list[Sample]:
        """One sample per request, in order. ``abort()`` is asked before every decoding step;
        once it says True, unfinished requests end with finish reason ``abort`` (a server
        pausing generation for a weight update)."""
        for request in requests:
            if not request.prompt_ids:
                raise ValueError(f"request {request.request_id!r} has an empty prompt")
        samples = []
        for start in range(0, len(requests), self.max_batch_size):
            batch = requests[start : start + self.max_batch_size]
            samples.extend(self._generate_batch(batch, start, abort or (lambda: False)))
        self._calls += 1
        return samples

    def _generator(self, request: GenerationRequest, index: int) -> torch.Generator:
        """The request's own seed, else one from (engine seed, call number, position)."""
        seed = request.sampling.seed
        if seed is None:
            seed = hash((self.seed, self._calls, index)) % 2**63
        return torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def _generate_batch(self, requests, first_index: int, abort) -> list[Sample]:
        states = [
            _Decoding(r, self._generator(r, first_index + i), [], [])
            for i, r in enumerate(requests)
        ]
        tokens, mask = self._left_padded(requests)  # [b, p]
        past = None
        while any(s.finish is None for s in states):
            if abort():
                for state in states:
                    state.finish = state.finish or FinishReason("abort")
                break
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [b, t]
            out = self.model(
                input_ids=tokens if past is None else tokens[:, -1:],
                attention_mask=mask,
                position_ids=positions if past is None else positions[:, -1:],
                use_cache=True,
                **{self._cache_arg: past},
            )
            past = out[self._cache_arg]
            next_ids = self._step(states, out.logits[:, -1])  # [b]
            tokens = torch.cat([tokens, next_ids[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        return [self._sample(s) for s in states]

    def _left_padded(self, requests):
        width = max(len(r.prompt_ids) for r in requests)
        tokens = torch.full((len(requests), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for row, request in enumerate(requests):
            tokens[row, width - len(request.prompt_ids) :] = torch.tensor(request.prompt_ids)
            mask[row, width - len(request.prompt_ids) :] = 1
        return tokens, mask

    def _step(self, states, last_logits) -> torch.Tensor:
        """Advance every unfinished request by one token; finished ones repeat a pad."""
        next_ids = torch.full((len(states),), self.pad_token_id, dtype=torch.long)
        for row, state in enumerate(states):
            if state.finish is not None:
                continue
            params = state.request.sampling
            token, logprob = next_token(
                last_logits[row], params, state.generator, self.processed_logprobs
            )
            state.output_ids.append(token)
            state.logprobs.append(logprob)
            next_ids[row] = token
            if token in params.stop_token_ids:
                state.finish = FinishReason("stop", matched=token)
            elif len(state.output_ids) >= params.max_new_tokens:
                state.finish = FinishReason("length")
        return next_ids

    def _sample(self, state: _Decoding) -> Sample:
        return Sample(
            request_id=state.request.request_id,
            prompt_ids=tuple(state.request.prompt_ids),
            output_ids=tuple(state.output_ids),
            output_logprobs=tuple(state.logprobs),
            finish_reason=state.finish,
            weight_version=self._version,
        )
