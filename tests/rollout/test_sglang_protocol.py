"""sglang's request and response bodies, checked against hand-written examples of what
sglang's server takes and returns (fields from its source: ../shared/SGLANG_API.md)."""

import pytest
import torch

from megatron_fork.rollout.sglang_protocol import (
    SGLANG_VERSION,
    InitWeightsUpdateGroup,
    ProtocolError,
    UpdateWeightsFromDistributed,
    generate_payload,
    parse_body,
    requests_from_payload,
    response_for,
    samples_from_response,
)
from megatron_fork.rollout.types import FinishReason, GenerationRequest, Sample, SamplingParams

REQUESTS = [
    GenerationRequest((1, 2, 3), SamplingParams(0.7, 0.9, 20, 16, (7,), seed=5), "a"),
    GenerationRequest((4,), SamplingParams(max_new_tokens=2), "b"),
]


def test_generate_body_is_sglangs():
    assert generate_payload(REQUESTS) == {
        "input_ids": [[1, 2, 3], [4]],
        "sampling_params": [
            {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "max_new_tokens": 16,
             "stop_token_ids": [7], "sampling_seed": 5},
            {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_new_tokens": 2,
             "stop_token_ids": []},
        ],
        "rid": ["a", "b"],
        "return_logprob": True,
        "logprob_start_len": -1,
    }  # fmt: skip
    assert requests_from_payload(generate_payload(REQUESTS)) == REQUESTS
    assert SGLANG_VERSION.count(".") >= 2


def test_an_sglang_answer_becomes_samples():
    answer = [
        {"text": "x", "output_ids": [9, 7],
         "meta_info": {"id": "a", "finish_reason": {"type": "stop", "matched": 7},
                       "prompt_tokens": 3, "completion_tokens": 2, "weight_version": "3",
                       "output_token_logprobs": [[-0.5, 9, None], [-1.25, 7, None]]}},
        {"text": "y", "output_ids": [5, 6],
         "meta_info": {"id": "b", "finish_reason": {"type": "length", "length": 2},
                       "weight_version": "3",
                       "output_token_logprobs": [[-2.0, 5, "q"], [-0.1, 6, "r"]]}},
    ]  # fmt: skip
    samples = samples_from_response(answer, REQUESTS)
    assert samples[0] == Sample("a", (1, 2, 3), (9, 7), (-0.5, -1.25), FinishReason("stop", 7), 3)
    assert samples[1].finish_reason == FinishReason("length")
    assert samples[1].weight_version == 3
    assert samples_from_response(response_for(samples), REQUESTS) == samples


def test_malformed_answers_and_requests_are_named():
    bad = [{"output_ids": [1], "meta_info": {"finish_reason": {"type": "stop"},
            "weight_version": "0", "output_token_logprobs": [[-1.0, 2, None]]}}]  # fmt: skip
    with pytest.raises(ProtocolError, match="logprob ids differ from output_ids"):
        samples_from_response(bad, REQUESTS[:1])
    with pytest.raises(ProtocolError, match="1 outputs for 2 requests"):
        samples_from_response(bad, REQUESTS)
    with pytest.raises(ProtocolError, match=r"unknown sampling_params keys \['seed'\]"):
        requests_from_payload({"input_ids": [[1]], "sampling_params": [{"seed": 1}]})
    with pytest.raises(ProtocolError, match="takes input_ids"):
        requests_from_payload({"text": "hello"})


def test_weight_update_bodies_are_sglangs():
    init = InitWeightsUpdateGroup("10.0.0.1", 29500, 1, 9, backend="nccl")
    assert init.body() == {
        "master_address": "10.0.0.1", "master_port": 29500, "rank_offset": 1,
        "world_size": 9, "group_name": "weight_update_group", "backend": "nccl",
    }  # fmt: skip
    update = UpdateWeightsFromDistributed(
        ("a.weight", "b.weight"), ("bfloat16", "float32"), ((2, 3), (4,)), weight_version="7"
    )
    assert update.body() == {
        "names": ["a.weight", "b.weight"], "dtypes": ["bfloat16", "float32"],
        "shapes": [[2, 3], [4]], "group_name": "weight_update_group", "weight_version": "7",
        "flush_cache": False, "abort_all_requests": False, "load_format": None,
        "torch_empty_cache": False,
    }  # fmt: skip
    assert parse_body(UpdateWeightsFromDistributed, update.body()) == update
    with pytest.raises(ProtocolError, match=r"unknown fields \['extra'\]"):
        parse_body(InitWeightsUpdateGroup, {**init.body(), "extra": 1})


def test_flattened_bucket_round_trip_and_mismatch():
    from megatron_fork.rollout.flattened_bucket import flatten_bucket, unflatten_bucket

    named = [
        ("a", torch.arange(6, dtype=torch.float32).view(2, 3)),
        ("b", torch.tensor([1.5, -2.0], dtype=torch.bfloat16)),
        ("c", torch.tensor([7], dtype=torch.float16)),
    ]
    buffer = flatten_bucket(named)
    assert buffer.dtype == torch.uint8 and buffer.numel() == 6 * 4 + 2 * 2 + 2
    names, dtypes, shapes = zip(*[(n, t.dtype, tuple(t.shape)) for n, t in named], strict=True)
    for (name, got), (_, want) in zip(unflatten_bucket(buffer, names, dtypes, shapes), named,
                                      strict=True):  # fmt: skip
        assert got.dtype == want.dtype and torch.equal(got, want), name
    with pytest.raises(ValueError, match="bytes no name claims"):
        unflatten_bucket(buffer, names[:2], dtypes[:2], shapes[:2])


def test_update_from_tensor_body_is_sglangs():
    from megatron_fork.rollout.sglang_protocol import UpdateWeightsFromTensor

    body = UpdateWeightsFromTensor(("cGF5bG9hZA==",), "flattened_bucket", weight_version="3").body()
    assert body == {
        "serialized_named_tensors": ["cGF5bG9hZA=="], "load_format": "flattened_bucket",
        "flush_cache": False, "abort_all_requests": False, "weight_version": "3",
    }  # fmt: skip
