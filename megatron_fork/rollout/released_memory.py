"""Which parts of each colocated engine's memory are released, kept in a file beside the run, so
a trainer restarted after a kill wakes engines it left released (at ``rollout.server_urls``).

Why a file: sglang 0.5.15 reports its released tags nowhere (``WeightUpdater.offload_tags`` is
read by no route), and resuming a tag that is not released ends the server (``set.remove`` in
``weight_updater.py:234``; the scheduler's exception handler, ``scheduler.py:4343-4351``), as
releasing twice does (it re-exports the released weights' buffers). vLLM answers
``/is_sleeping`` and wakes only what sleeps, so it needs no record, but gets one too.

The record is written right after each release or resume answers: a kill between a call and its
record (a local file write) leaves it one step behind, and the restarted trainer's wake then
fails on that engine (sglang: it ends; a pool restarts it, engines at fixed URLs must be
restarted by hand)."""

import json
from pathlib import Path

from megatron_fork.atomic_files import write_text_atomically

PARTS = ("weights", "kv_cache")
"""What is released and resumed, in the order a wake resumes them."""


class ReleasedRecord:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> dict[str, list[str]]:
        """url -> the parts released there (none recorded: {})."""
        if not self.path.is_file():
            return {}
        return {url: list(parts) for url, parts in json.loads(self.path.read_text()).items()}

    def write(self, released: dict[str, set[str]]) -> None:
        listing = {url: [p for p in PARTS if p in parts] for url, parts in released.items()}
        write_text_atomically(self.path, json.dumps(listing, sort_keys=True) + "\n")


def wake_released(record: ReleasedRecord, clients: list) -> None:
    """Resume, on each server at ``clients``' URLs, the parts the record says a killed trainer
    left released, and continue its generation; the record is cleared. The weights come back
    without values: the first sync fills them before anything is generated."""
    released = record.read()
    for client in clients:
        parts = released.get(client.url, [])
        for part in PARTS:
            if part in parts:
                client.resume_memory(part)
        if parts:
            client.resume()
    record.write({})
