"""The per-token table the analysis tools share: one row per generated token (sample, position
in the response, token id, vocabulary piece, decoded text, log-prob, entropy), as Parquet
written a row group per chunk of samples, so a large prompt set streams to disk; run metadata
(model, temperature, prompt set, weight version, vocabulary, and at the end the sample and
token counts) in the file's key-value metadata.

A sample's first row (position 0) also carries its prompt (text and ids), so the same
responses can be scored again by another checkpoint (``given_responses``); the other rows leave
those two columns null. A sample never spans two row groups. Written to a temporary name and
renamed when complete."""

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

SCHEMA = pa.schema(
    [
        ("sample", pa.string()),
        ("position", pa.int32()),
        ("token_id", pa.int64()),
        ("piece", pa.string()),
        ("text", pa.string()),
        ("logprob", pa.float32()),
        ("entropy", pa.float32()),
        ("prompt", pa.string()),
        ("prompt_ids", pa.list_(pa.int32())),
    ]
)
METADATA_KEY = b"megatron_fork.analysis"


@dataclass(frozen=True)
class Detokenizer:
    """How ids become text in the table: a token's vocabulary ``piece`` (e.g. ``Ġthe``) and
    the ``text`` of a list of ids (``" the"`` for one token, the prompt for many)."""

    piece: Callable[[int], str]
    text: Callable[[list[int]], str]

    @classmethod
    def of(cls, tokenizer) -> "Detokenizer":
        """From a Hugging Face tokenizer; single tokens are cached (a vocabulary is finite)."""
        piece = lru_cache(maxsize=65536)(lambda t: tokenizer.convert_ids_to_tokens(t) or "")
        one = lru_cache(maxsize=65536)(lambda t: tokenizer.decode([t]))
        return cls(piece, lambda ids: one(ids[0]) if len(ids) == 1 else tokenizer.decode(ids))


class TokenTableWriter:
    def __init__(self, path: str | Path, metadata: dict):
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self.metadata = dict(metadata)  # written again on close, with what was learnt since
        schema = SCHEMA.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True)})
        self._writer = pq.ParquetWriter(str(self._tmp), schema)
        self.rows = 0
        self.samples = 0

    def write(self, samples, scores, detokenizer: Detokenizer) -> None:
        """One row group: every response token of ``samples`` with its (log-prob, entropy)."""
        columns = {name: [] for name in SCHEMA.names}
        for sample, (logprob, entropy) in zip(samples, scores, strict=True):
            if len(logprob) != len(sample.output_ids):
                raise ValueError(f"{sample.request_id}: {len(logprob)} scores, tokens differ")
            prompt = detokenizer.text(list(sample.prompt_ids))
            for position, token in enumerate(sample.output_ids):
                first = position == 0
                columns["sample"].append(sample.request_id)
                columns["position"].append(position)
                columns["token_id"].append(token)
                columns["piece"].append(detokenizer.piece(token))
                columns["text"].append(detokenizer.text([token]))
                columns["logprob"].append(float(logprob[position]))
                columns["entropy"].append(float(entropy[position]))
                columns["prompt"].append(prompt if first else None)
                columns["prompt_ids"].append(list(sample.prompt_ids) if first else None)
        self._writer.write_table(pa.table(columns, schema=self._writer.schema))
        self.rows += len(columns["sample"])
        self.samples += len(samples)

    def close(self) -> Path:
        totals = {**self.metadata, "samples": self.samples, "tokens": self.rows}
        self._writer.add_key_value_metadata({METADATA_KEY: json.dumps(totals, sort_keys=True)})
        self._writer.close()
        os.replace(self._tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Stop without a table: nothing half-written is left under either name."""
        if self._writer.is_open:
            self._writer.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            self.close()
        else:
            self.discard()
        return False


def read_metadata(path: str | Path) -> dict:
    """The run metadata of a token table (raises for a Parquet file the tools did not write)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no token table at {path}")
    raw = (pq.ParquetFile(str(path)).metadata.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a token table written by the analysis tools")
    return json.loads(raw)


def read_token_table(path: str | Path, columns: list[str] | None = None) -> tuple[pa.Table, dict]:
    """The whole table (or only ``columns``) and its metadata."""
    metadata = read_metadata(path)
    return pq.read_table(str(path), columns=columns), metadata


def iter_row_groups(path: str | Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The table one row group (one chunk of whole samples) at a time: bounded memory."""
    read_metadata(path)
    file = pq.ParquetFile(str(path))
    for index in range(file.num_row_groups):
        yield file.read_row_group(index, columns=columns)


def entropy_column(table: pa.Table) -> torch.Tensor:
    """A table's entropies as a float64 tensor [N] (a copy: Arrow's buffers are read-only)."""
    return torch.tensor(table.column("entropy").to_numpy(), dtype=torch.float64)
