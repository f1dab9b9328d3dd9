"""sglang's HTTP protocol, as RL trainers use it, in one place: request and response bodies of
``/generate`` and of the weight-update endpoints, built and parsed for both sides (the trainer's
client and this project's CPU server), so the code that talks to sglang is the code tested here.

Fields follow sglang ``SGLANG_VERSION``'s server (the weight-update bodies checked field by
field against ``managers/io_struct.py``'s ``*ReqInput`` classes) (``entrypoints/http_server.py``,
``managers/io_struct.py``, ``sampling/sampling_params.py``; see ../shared/SGLANG_API.md):
``input_ids`` as a list of lists with one ``sampling_params`` dict each; ``return_logprob`` with
``logprob_start_len=-1`` (output tokens only); per-request seeds as ``sampling_seed`` (sglang
honours them with ``--enable-deterministic-inference``); the response's ``meta_info`` with
``finish_reason``, ``output_token_logprobs`` ([logprob, id, text] per token) and
``weight_version`` (a string in sglang; integers here, sent as their decimal string).

Rules of sglang 0.5.15.post1 a client must keep (the CPU server keeps the first and third):
- ``rid``s are unique within a ``/generate`` batch (400 "Duplicate request IDs detected within
  the request", ``io_struct.py`` ``_validate_rid_uniqueness``) and against requests still in
  flight on the server, paused ones included (400 "Duplicate request ID detected",
  ``tokenizer_manager.py`` ``_init_req_state``). Aborts match by prefix
  (``scheduler.py`` ``abort_request``: ``req.rid.startswith``), and a client that disconnects
  aborts its requests, so ids should be prefix-free (``rollout_phase.request_id``).
- An aborted output still carries ``output_ids`` and log-probs, the latter sliced to
  ``max(len(output_ids), 1)``: read ``finish_reason`` before checking them.
- ``/health`` is ``/health_generate`` (SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION defaults on): a
  one-token generation that waits on a pause and answers 503 after SGLANG_HEALTH_CHECK_TIMEOUT
  (20 s), and 503 while the server warms up; a liveness probe reads ``/model_info`` instead
  (``/ping`` answers too). ``/health*`` needs no API key; ``/model_info`` and ``/ping`` do.
- ``/update_weight_version`` aborts running requests unless ``abort_all_requests=false``;
  ``/continue_generation`` empties the CUDA cache unless ``torch_empty_cache=false``.
"""

import uuid
from collections import Counter
from dataclasses import asdict, dataclass

from megatron_fork.rollout.types import FinishReason, GenerationRequest, Sample, SamplingParams

SGLANG_VERSION = "0.5.15.post1"
"""The one pinned sglang version (the Dockerfile and the launcher read it from here)."""

DEFAULT_GROUP_NAME = "weight_update_group"
_SAMPLING_KEYS = {
    "temperature", "top_p", "top_k", "min_p", "max_new_tokens", "stop", "stop_token_ids",
    "ignore_eos", "skip_special_tokens", "n", "sampling_seed",
}  # fmt: skip
"""The sampling keys sglang accepts that a trainer sends (sglang refuses unknown keys)."""


class ProtocolError(ValueError):
    """A body that does not follow the protocol; the message names the field."""


def generate_payload(requests: list[GenerationRequest]) -> dict:
    """One ``/generate`` body for a batch of requests (prompt-major, one sample each)."""
    return {
        "input_ids": [list(r.prompt_ids) for r in requests],
        "sampling_params": [_sampling_dict(r.sampling) for r in requests],
        "rid": [r.request_id for r in requests],
        "return_logprob": True,
        "logprob_start_len": -1,
    }


def _sampling_dict(params: SamplingParams) -> dict:
    if params.high_entropy_temperature is not None:
        raise ProtocolError(
            "two-temperature decoding is not an sglang sampling parameter: use the in-process "
            "engine (rollout.engine=torch) for it"
        )
    body = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "max_new_tokens": params.max_new_tokens,
        "stop_token_ids": list(params.stop_token_ids),
    }
    if params.seed is not None:
        body["sampling_seed"] = params.seed
    return body


def requests_from_payload(body: dict) -> list[GenerationRequest]:
    """The server side of ``generate_payload``: unknown sampling keys and a batch that repeats a
    request id are refused as sglang refuses them, and only what this protocol sends is
    accepted."""
    if "text" in body:
        raise ProtocolError("this server takes input_ids (token ids), not text")
    ids, params = body.get("input_ids"), body.get("sampling_params")
    if not isinstance(ids, list) or not all(isinstance(row, list) for row in ids):
        raise ProtocolError("input_ids must be a list of token-id lists")
    params = params if isinstance(params, list) else [params or {}] * len(ids)
    rids = body.get("rid") or [uuid.uuid4().hex for _ in ids]  # sglang's default: fresh ids
    if len(params) != len(ids) or len(rids) != len(ids):
        raise ProtocolError("input_ids, sampling_params and rid must have the same length")
    repeated = [rid for rid, count in Counter(rids).items() if count > 1]
    if repeated:  # sglang's GenerateReqInput._validate_rid_uniqueness, its words
        raise ProtocolError(f"Duplicate request IDs detected within the request: {repeated}")
    return [
        GenerationRequest(tuple(row), _sampling_params(p), str(rid))
        for row, p, rid in zip(ids, params, rids, strict=True)
    ]


def _sampling_params(body: dict) -> SamplingParams:
    unknown = set(body) - _SAMPLING_KEYS
    if unknown:
        raise ProtocolError(f"unknown sampling_params keys {sorted(unknown)}")
    if body.get("n", 1) != 1:
        raise ProtocolError("n > 1 is not served: send one request per sample")
    seed = body.get("sampling_seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ProtocolError(f"sampling_seed must be an integer, got {seed!r}")
    try:
        return SamplingParams(
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            top_k=int(body.get("top_k", -1)),
            max_new_tokens=int(body.get("max_new_tokens", 128)),
            stop_token_ids=tuple(int(t) for t in body.get("stop_token_ids") or ()),
            seed=seed,
        )
    except (TypeError, ValueError) as error:
        raise ProtocolError(f"sampling_params: {error}") from error


def response_for(samples: list[Sample]) -> list[dict]:
    """The server side: one sglang-shaped output per sample."""
    return [
        {
            "text": "",
            "output_ids": list(s.output_ids),
            "meta_info": {
                "id": s.request_id,
                "finish_reason": _finish_dict(s.finish_reason, len(s.output_ids)),
                "prompt_tokens": len(s.prompt_ids),
                "completion_tokens": len(s.output_ids),
                "weight_version": str(s.weight_version),
                "output_token_logprobs": [
                    [lp, tok, None] for lp, tok in zip(s.output_logprobs, s.output_ids, strict=True)
                ],
            },
        }
        for s in samples
    ]


def _finish_dict(reason: FinishReason, length: int) -> dict:
    if reason.kind == "stop":
        return {"type": "stop", "matched": reason.matched}
    if reason.kind == "length":
        return {"type": "length", "length": length}
    return {"type": "abort", "message": "generation paused"}


def samples_from_response(outputs, requests: list[GenerationRequest]) -> list[Sample]:
    """The client side: Samples from a ``/generate`` answer to ``generate_payload(requests)``."""
    outputs = outputs if isinstance(outputs, list) else [outputs]
    if len(outputs) != len(requests):
        raise ProtocolError(f"{len(outputs)} outputs for {len(requests)} requests")
    return [_sample(out, request) for out, request in zip(outputs, requests, strict=True)]


def _sample(out: dict, request: GenerationRequest) -> Sample:
    """Its finish reason is read first: an aborted answer is re-sent by the caller, never
    trained on, so it is kept only as far as its log-prob ids agree with its ``output_ids``
    (sglang cuts log-probs at ``max(len(output_ids), 1)``: an abort with no ids may carry one)
    and never fails the batch; any other answer must agree in full."""
    try:
        meta = out["meta_info"]
        finish = meta["finish_reason"] or {"type": "abort"}
        kind = finish.get("type")
        output_ids = tuple(int(t) for t in out["output_ids"])
        version = int(meta["weight_version"])
        key = "output_token_logprobs"
        pairs = (meta.get(key) or []) if kind == "abort" else meta[key]
        pairs = tuple((float(lp), int(t)) for lp, t, _ in pairs)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise ProtocolError(f"malformed /generate output ({error!r}): {str(out)[:200]}") from error
    if kind not in ("stop", "length", "abort"):
        raise ProtocolError(f"request {request.request_id!r}: unknown finish_reason {finish}")
    output_ids, pairs = trusted_tokens(kind, pairs, output_ids, request.request_id)
    matched = finish.get("matched") if kind == "stop" else None
    return Sample(
        request_id=request.request_id,
        prompt_ids=tuple(request.prompt_ids),
        output_ids=output_ids,
        output_logprobs=tuple(lp for lp, _ in pairs),
        finish_reason=FinishReason(kind, matched if isinstance(matched, int) else None),
        weight_version=version,
    )


def trusted_tokens(kind: str, pairs: tuple, output_ids: tuple, request_id: str) -> tuple:
    """(ids, (log-prob, id) pairs) of an answer: an aborted one (sent again, never trained on)
    keeps the prefix where both agree; any other must agree in full."""
    if kind == "abort":
        kept = agreeing_prefix(pairs, output_ids)
        return output_ids[:kept], pairs[:kept]
    if tuple(t for _, t in pairs) != output_ids:
        raise ProtocolError(f"request {request_id!r}: logprob ids differ from output_ids")
    return output_ids, pairs


def agreeing_prefix(pairs: tuple, output_ids: tuple) -> int:
    """How many leading (log-prob, id) pairs name the output id at their position."""
    count = 0
    while count < min(len(pairs), len(output_ids)) and pairs[count][1] == output_ids[count]:
        count += 1
    return count


@dataclass(frozen=True)
class InitWeightsUpdateGroup:
    """``/init_weights_update_group``: engine TP rank r joins at ``rank_offset + r``; the
    trainer is rank 0 and hosts the rendezvous store."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    group_name: str = DEFAULT_GROUP_NAME
    backend: str = "nccl"

    def body(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class UpdateWeightsFromDistributed:
    """``/update_weights_from_distributed``: one call per bucket; the receiver takes one
    broadcast from rank 0 per tensor, in the order of ``names``."""

    names: tuple[str, ...]
    dtypes: tuple[str, ...]
    """torch dtype names without the ``torch.`` prefix, e.g. "bfloat16"."""
    shapes: tuple[tuple[int, ...], ...]
    group_name: str = DEFAULT_GROUP_NAME
    weight_version: str | None = None
    """Set with the last bucket only: the version changes when the whole model is in."""
    flush_cache: bool = False
    abort_all_requests: bool = False
    load_format: str | None = None
    """None: one broadcast per tensor; "flattened_bucket": one uint8 broadcast of the bucket
    (``flattened_bucket.flatten_bucket``)."""
    torch_empty_cache: bool = False

    def body(self) -> dict:
        body = asdict(self)
        body.update(names=list(self.names), dtypes=list(self.dtypes))
        body["shapes"] = [list(s) for s in self.shapes]
        return body


@dataclass(frozen=True)
class UpdateWeightsFromTensor:
    """``/update_weights_from_tensor`` (colocated engines): one serialized payload per engine
    TP rank, made by sglang's ``MultiprocessingSerializer`` from CUDA IPC handles (GPU only;
    the source tensors must live until the call returns)."""

    serialized_named_tensors: tuple[str, ...]
    load_format: str | None = None
    flush_cache: bool = False
    abort_all_requests: bool = False
    weight_version: str | None = None

    def body(self) -> dict:
        return {**asdict(self), "serialized_named_tensors": list(self.serialized_named_tensors)}


def parse_body(cls, body: dict):
    """A protocol dataclass from a JSON body; missing or unknown fields are named."""
    known = {f for f in cls.__dataclass_fields__}
    unknown = set(body) - known
    if unknown:
        raise ProtocolError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    try:
        fields = dict(body)
        if cls is UpdateWeightsFromDistributed:
            fields.update(names=tuple(body["names"]), dtypes=tuple(body["dtypes"]))
            fields["shapes"] = tuple(tuple(int(d) for d in s) for s in body["shapes"])
        return cls(**fields)
    except (KeyError, TypeError) as error:
        raise ProtocolError(f"{cls.__name__}: {error}") from error
