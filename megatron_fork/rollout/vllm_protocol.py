"""vLLM's RL HTTP interface, as this trainer uses it, in one place: the bodies of its
token-in/token-out ``/inference/v1/generate`` and of its weight-transfer routes, built and
parsed for both sides (the trainer's client, ``vllm_client.py``, and this project's CPU server
answering as vLLM), so the code that talks to vLLM is the code the suite runs.

Fields follow vLLM ``vllm_launch.VLLM_VERSION`` (read from its source; ../shared/VLLM_API.md):

- Generation, one request per sample (each with its own ``seed``): ``token_ids``,
  ``request_id``, ``sampling_params`` as vLLM's ``SamplingParams`` JSON, ``logprobs: 0`` (the
  sampled token's log-prob only). The answer's one choice carries ``token_ids`` (a matched stop
  id kept), ``logprobs.content[i].logprob``, ``finish_reason`` (stop, length, abort),
  ``stop_reason`` (the matched ``stop_token_ids`` entry; None on EOS) and ``weight_versions``:
  spans ``{version, start, end}`` over the output tokens, a version string each. vLLM ignores
  unknown keys in a body; the CPU server refuses them, so a misspelt key fails the suite.
- Greedy is ``temperature: 0`` in vLLM (it raises 0 < T < 0.01 to 0.01 and samples), so the
  project's ``GREEDY_TEMPERATURE`` maps to 0; ``top_k`` -1 and 0 both mean all tokens.
- Log-probs: engines run with ``--logprobs-mode processed_logprobs``: log softmax(logits / T)
  renormalised over the tokens top-k/top-p keep. With top_p = 1 and no top-k (the rollouts'
  default) that is exactly the trainer's log softmax(logits / T) over the vocabulary; under a
  nucleus it is higher by -log(kept mass) (the probability the engine actually sampled with),
  where sglang reports the untruncated value. vLLM's default (raw_logprobs) ignores T.
- Weight transfer: ``init_info`` (rank offset, world size, one rendezvous: vLLM's
  ``nccl_unique_id_b64`` for NCCL, or ``master_address``/``master_port``, which the CPU server
  takes for its gloo group), then per sync ``/start_weight_update``, ``/update_weights`` per
  bucket (``update_info``: names, dtype names, full Hugging Face shapes) and
  ``/finish_weight_update`` with the version string. Tensors arrive one broadcast from rank 0
  each, in the order of the names, or ``packed`` as uint8 chunks (``packed_chunks``).
"""

import base64
from dataclasses import asdict, dataclass, fields

from megatron_fork.rollout.sglang_protocol import ProtocolError, trusted_tokens
from megatron_fork.rollout.types import (
    GREEDY_TEMPERATURE,
    FinishReason,
    GenerationRequest,
    Sample,
    SamplingParams,
)

GENERATE_PATH = "/inference/v1/generate"
INITIAL_VERSION = "default"
"""vLLM's weight version before any update (``EngineCore._weight_version``): the weights the
engine loaded, version 0 here (as sglang's ``--weight-version 0``)."""
TRANSFER_STORE_PREFIX = "vllm_weight_transfer"
"""Where the CPU server and the trainer meet in the rendezvous store of a gloo weight-transfer
group (vLLM's group has no name; real engines rendezvous by ``nccl_unique_id_b64``)."""
TRANSFER_GROUP_NAME_KEY = f"{TRANSFER_STORE_PREFIX}/group_name"
"""The rendezvous store key where the trainer (rank 0) publishes its gloo group's local name:
torch keys a group's rendezvous under ``group_name/`` inside the store prefix
(``_new_process_group_helper``), so both sides must use one name."""
DEFAULT_PACKED_BUFFER_BYTES = 1 << 30
"""vLLM's default ``packed_buffer_size_bytes`` (1 GiB)."""
_SAMPLING_KEYS = {
    "temperature", "top_p", "top_k", "max_tokens", "stop_token_ids", "seed", "logprobs",
    "detokenize", "n", "ignore_eos", "skip_special_tokens",
}  # fmt: skip
"""The ``SamplingParams`` fields this trainer sends (the CPU server refuses others)."""


def generate_body(request: GenerationRequest) -> dict:
    """One ``/inference/v1/generate`` body: one sample of one prompt, token ids in and out."""
    params = request.sampling
    if params.high_entropy_temperature is not None:
        raise ProtocolError(
            "two-temperature decoding is not a vLLM sampling parameter: use the in-process "
            "engine (rollout.engine=torch) for it"
        )
    sampling = {
        "temperature": 0.0 if params.temperature < GREEDY_TEMPERATURE else params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "max_tokens": params.max_new_tokens,
        "stop_token_ids": list(params.stop_token_ids),
        "logprobs": 0,
        "detokenize": False,
    }
    if params.seed is not None:
        sampling["seed"] = params.seed
    return {
        "request_id": request.request_id,
        "token_ids": list(request.prompt_ids),
        "sampling_params": sampling,
        "stream": False,
    }


def request_from_body(body: dict) -> GenerationRequest:
    """The server side of ``generate_body``: what vLLM refuses is refused here, and unknown
    keys too (vLLM drops them silently: a misspelt key would do nothing there)."""
    ids, sampling = body.get("token_ids"), body.get("sampling_params") or {}
    if not isinstance(ids, list) or not ids or not all(_is_int(t) for t in ids):
        raise ProtocolError("token_ids must be a non-empty list of token ids")
    if body.get("stream"):
        raise ProtocolError("stream=true is not served: the trainer reads whole answers")
    unknown = set(sampling) - _SAMPLING_KEYS
    if unknown:
        raise ProtocolError(f"unknown sampling_params keys {sorted(unknown)}")
    if sampling.get("n", 1) != 1:
        raise ProtocolError("n > 1 is not served: send one request per sample")
    seed = sampling.get("seed")
    if seed is not None and not _is_int(seed):
        raise ProtocolError(f"seed must be an integer, got {seed!r}")
    temperature = float(sampling.get("temperature", 1.0))
    if 0 < temperature < 0.01:
        temperature = 0.01  # vLLM raises tiny temperatures to 0.01 and samples
    try:
        params = SamplingParams(
            temperature=temperature,
            top_p=float(sampling.get("top_p", 1.0)),
            top_k=int(sampling.get("top_k", -1)) or -1,  # vLLM: 0 and -1 mean all
            max_new_tokens=int(sampling.get("max_tokens", 16)),  # vLLM's default 16
            stop_token_ids=tuple(int(t) for t in sampling.get("stop_token_ids") or ()),
            seed=seed,
        )
    except (TypeError, ValueError) as error:
        raise ProtocolError(f"sampling_params: {error}") from error
    return GenerationRequest(tuple(ids), params, str(body.get("request_id") or ""))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def response_for(
    sample: Sample, eos_ids: tuple[int, ...] = (), versions: list[tuple[int, str]] | None = None
) -> dict:
    """The server side: a vLLM-shaped answer with one choice. ``eos_ids``: ids that end a
    sample as EOS (``stop_reason`` None) rather than as a ``stop_token_ids`` match.
    ``versions``: (first output token, version string) where the engine's version changed
    (vLLM stamps each step's output); default: the sample's own version throughout."""
    reason = sample.finish_reason
    stop_reason = None
    if reason.kind == "stop" and reason.matched is not None and reason.matched not in eos_ids:
        stop_reason = reason.matched
    choice = {
        "index": 0,
        "token_ids": list(sample.output_ids),
        "logprobs": {
            "content": [
                {"token_id": tok, "logprob": lp, "top_logprobs": []}
                for tok, lp in zip(sample.output_ids, sample.output_logprobs, strict=True)
            ]
        },
        "finish_reason": reason.kind,
        "stop_reason": stop_reason,
        "weight_versions": version_spans(
            versions or [(0, str(sample.weight_version))], len(sample.output_ids)
        ),
    }
    return {"request_id": sample.request_id, "choices": [choice]}


def version_spans(versions: list[tuple[int, str]], length: int) -> list[dict]:
    """vLLM's ``weight_versions`` of ``length`` output tokens: one span per run of tokens
    sampled under one version, none for no tokens (``output_processor._weight_version_spans``).
    ``versions``: (first token index, version), ascending."""
    starts: list[tuple[int, str]] = []
    for start, version in versions:
        if start < length and (not starts or starts[-1][1] != version):
            starts.append((start, version))
    if not starts:
        return []
    ends = [start for start, _ in starts[1:]] + [length]
    return [
        {"version": version, "start": start, "end": end}
        for (start, version), end in zip(starts, ends, strict=True)
    ]


def sample_from_response(answer: dict, request: GenerationRequest) -> Sample:
    """The client side: a Sample from the answer to ``generate_body(request)``. The finish
    reason is read first: an aborted answer (sent again by the caller, never trained on) keeps
    what agrees; any other must be whole. A sample whose tokens span more than one weight
    version gets version -1, which no sync ever sets (it is refused as stale)."""
    try:
        choices = answer["choices"]
        if len(choices) != 1:
            raise ValueError(f"{len(choices)} choices for one request")
        choice = choices[0]
        kind = choice["finish_reason"]
        output_ids = tuple(int(t) for t in choice["token_ids"])
        content = (choice.get("logprobs") or {}).get("content") or []
        pairs = tuple((float(c["logprob"]), int(c["token_id"])) for c in content)
        version = _single_version(choice.get("weight_versions"), kind == "abort")
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise ProtocolError(
            f"malformed {GENERATE_PATH} answer ({error!r}): {str(answer)[:200]}"
        ) from error
    if kind not in ("stop", "length", "abort"):
        raise ProtocolError(f"request {request.request_id!r}: finish_reason {kind!r}")
    output_ids, pairs = trusted_tokens(kind, pairs, output_ids, request.request_id)
    return Sample(
        request_id=request.request_id,
        prompt_ids=tuple(request.prompt_ids),
        output_ids=output_ids,
        output_logprobs=tuple(lp for lp, _ in pairs),
        finish_reason=FinishReason(kind, _matched(choice, kind, output_ids)),
        weight_version=version,
    )


def _single_version(spans, aborted: bool) -> int:
    """The one weight version of an answer's tokens; -1 when they span several, or when an
    aborted answer has none (vLLM sends [] or null when it stopped before a stamped token)."""
    if not spans:
        if aborted:
            return -1
        raise ValueError("no weight_versions (the engine must report them)")
    versions = {str(span["version"]) for span in spans}
    return version_number(versions.pop()) if len(versions) == 1 else -1


def version_number(reported: str) -> int:
    """A vLLM version string as this trainer's integer ("default": 0)."""
    return 0 if reported == INITIAL_VERSION else int(reported)


def _matched(choice: dict, kind: str, output_ids: tuple[int, ...]) -> int | None:
    """The stop id that ended a ``stop``: vLLM's ``stop_reason`` for a ``stop_token_ids``
    match; on EOS (``stop_reason`` None) the kept last id."""
    if kind != "stop":
        return None
    reason = choice.get("stop_reason")
    if _is_int(reason):
        return reason
    return output_ids[-1] if output_ids else None


@dataclass(frozen=True)
class InitInfo:
    """``/init_weight_transfer_engine``'s ``init_info``: worker TP rank r joins at
    ``rank_offset + r``; the trainer is rank 0. One rendezvous: ``nccl_unique_id_b64`` (NCCL;
    the trainer mints the id) or ``master_address``/``master_port`` (the CPU server's gloo)."""

    rank_offset: int
    world_size: int
    master_address: str | None = None
    master_port: int | None = None
    nccl_unique_id_b64: str | None = None
    packed: bool = False
    packed_buffer_size_bytes: int = DEFAULT_PACKED_BUFFER_BYTES
    packed_num_buffers: int = 2

    def __post_init__(self):
        by_store = self.master_address is not None and self.master_port is not None
        if by_store == (self.nccl_unique_id_b64 is not None):
            raise ProtocolError(
                "init_info: give exactly one rendezvous, nccl_unique_id_b64 or "
                "master_address + master_port"
            )

    def body(self) -> dict:
        return {"init_info": {k: v for k, v in asdict(self).items() if v is not None}}

    @property
    def unique_id(self) -> bytes | None:
        return (
            None if self.nccl_unique_id_b64 is None else base64.b64decode(self.nccl_unique_id_b64)
        )


@dataclass(frozen=True)
class UpdateInfo:
    """``/update_weights``'s ``update_info``: one bucket, full (unsharded) Hugging Face
    tensors in the order they are broadcast."""

    names: tuple[str, ...] = ()
    dtype_names: tuple[str, ...] = ()
    """torch dtype names without the ``torch.`` prefix, e.g. "bfloat16"."""
    shapes: tuple[tuple[int, ...], ...] = ()
    """All three default to empty, as vLLM's (empty: the previous call's metadata)."""

    def body(self) -> dict:
        return {
            "update_info": {
                "names": list(self.names),
                "dtype_names": list(self.dtype_names),
                "shapes": [list(s) for s in self.shapes],
            }
        }


def parse_init_info(body: dict) -> InitInfo:
    """The server side of ``InitInfo.body``: unknown fields are refused, as vLLM's
    ``cls(**init_info)`` refuses them."""
    return _parse(InitInfo, body.get("init_info"), "init_info")


def parse_update_info(body: dict) -> UpdateInfo:
    info = body.get("update_info")
    update = _parse(UpdateInfo, info, "update_info")
    try:
        shapes = tuple(tuple(int(d) for d in s) for s in update.shapes)
        update = UpdateInfo(tuple(update.names), tuple(update.dtype_names), shapes)
    except (TypeError, ValueError) as error:
        raise ProtocolError(f"update_info: shapes {error}") from error
    if not len(update.names) == len(update.dtype_names) == len(update.shapes):
        raise ProtocolError("update_info: names, dtype_names and shapes differ in length")
    return update


def _parse(cls, info, what: str):
    if not isinstance(info, dict):
        raise ProtocolError(f"{what} must be an object, got {type(info).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(info) - known
    if unknown:
        raise ProtocolError(f"{what}: unknown fields {sorted(unknown)}")
    try:
        return cls(**info)
    except TypeError as error:
        raise ProtocolError(f"{what}: {error}") from error


def packed_chunks(nbytes: list[int], buffer_bytes: int) -> list[range]:
    """vLLM's packed wire: tensors (in name order) go into uint8 chunks, a chunk closing after
    the tensor that takes it past ``buffer_bytes``; one broadcast per chunk. Index ranges."""
    chunks, start, size = [], 0, 0
    for index, count in enumerate(nbytes):
        size += count
        if size > buffer_bytes:
            chunks.append(range(start, index + 1))
            start, size = index + 1, 0
    if start < len(nbytes):
        chunks.append(range(start, len(nbytes)))
    return chunks
