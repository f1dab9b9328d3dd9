"""The per-token table the analysis tools share: one row per generated token (sample, position
in the response, token id, text piece, log-prob, entropy), as Parquet written a row group per
chunk of samples, so a large prompt set streams to disk; run metadata (model, temperature,
prompt set, weight version) in the file's schema metadata. Written to a temporary name and
renamed when complete."""

import json
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("sample", pa.string()),
        ("position", pa.int32()),
        ("token_id", pa.int64()),
        ("piece", pa.string()),
        ("logprob", pa.float32()),
        ("entropy", pa.float32()),
    ]
)
METADATA_KEY = b"megatron_fork.analysis"


class TokenTableWriter:
    def __init__(self, path: str | Path, metadata: dict):
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        schema = SCHEMA.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True)})
        self._writer = pq.ParquetWriter(str(self._tmp), schema)
        self.rows = 0

    def write(self, samples, scores, piece_of: Callable[[int], str]) -> None:
        """One row group: every response token of ``samples`` with its (log-prob, entropy)."""
        columns = {name: [] for name in SCHEMA.names}
        for sample, (logprob, entropy) in zip(samples, scores, strict=True):
            if len(logprob) != len(sample.output_ids):
                raise ValueError(f"{sample.request_id}: {len(logprob)} scores, tokens differ")
            for position, token in enumerate(sample.output_ids):
                columns["sample"].append(sample.request_id)
                columns["position"].append(position)
                columns["token_id"].append(token)
                columns["piece"].append(piece_of(token))
                columns["logprob"].append(float(logprob[position]))
                columns["entropy"].append(float(entropy[position]))
        self._writer.write_table(pa.table(columns, schema=self._writer.schema))
        self.rows += len(columns["sample"])

    def close(self) -> Path:
        self._writer.close()
        os.replace(self._tmp, self.path)
        return self.path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            self.close()
        else:  # nothing half-written under the final name
            self._writer.close()
            self._tmp.unlink(missing_ok=True)
        return False


def read_token_table(path: str | Path) -> tuple[pa.Table, dict]:
    table = pq.read_table(str(path))
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a token table written by the analysis tools")
    return table, json.loads(raw)
