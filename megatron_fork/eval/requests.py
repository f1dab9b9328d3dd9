"""The generation requests of an evaluation, seeded exactly as the trainer's evaluation seeds
them (``rl.rollout_phase.evaluate_avg_at_k``), so that on the same model, prompts and eval
seed the evaluator draws the same responses as a run's own evaluation.

The trainer walks the prompts in chunks of ``EVAL_CHUNK``; sample ``i`` of the prompt in slot
``j`` of the chunk starting at prompt ``start`` is seeded ``stable_seed("eval", seed, start, j,
i)``. Here any subset of prompts (those a resume has left) gets the seeds it would have had in
the trainer's walk over the whole file, whatever batch it is generated in.
"""

import inspect
from dataclasses import replace

from megatron_fork.data.types import PromptExample
from megatron_fork.rl.rollout_phase import evaluate_avg_at_k, request_id, stable_seed
from megatron_fork.rollout.types import GenerationRequest, SamplingParams

EVAL_CHUNK: int = inspect.signature(evaluate_avg_at_k).parameters["chunk"].default
"""The trainer's evaluation chunk, read from its signature so the two cannot drift apart."""

REQUEST_KIND = "x"
"""Request ids ``x...``: apart from a trainer's rollout (``r``) and evaluation (``e``) ids, in
case both use one server."""


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The trainer's eval seed of sample ``sample_index`` of the ``prompt_index``-th prompt."""
    start = prompt_index // EVAL_CHUNK * EVAL_CHUNK
    return stable_seed("eval", seed, start, prompt_index - start, sample_index)


def sample_request_id(prompt_index: int, sample_index: int) -> str:
    chunk, slot = divmod(prompt_index, EVAL_CHUNK)
    return request_id(REQUEST_KIND, 0, chunk, slot, sample_index)


def eval_requests(
    prompts: list[tuple[int, PromptExample]],
    prompt_ids,
    k: int,
    sampling: SamplingParams,
    eos_id: int,
    seed: int,
) -> list[GenerationRequest]:
    """``k`` requests per ``(prompt index, example)``, prompt-major. ``prompt_ids(example)``
    encodes a prompt as the trainer does (``GroupSampler.prompt_ids``); generation stops at
    ``eos_id`` (kept), as in the trainer."""
    return [
        GenerationRequest(
            prompt_ids=prompt_ids(example),
            sampling=replace(sampling, seed=sample_seed(seed, p, i), stop_token_ids=(eos_id,)),
            request_id=sample_request_id(p, i),
        )
        for p, example in prompts
        for i in range(k)
    ]
