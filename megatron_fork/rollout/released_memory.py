"""Which parts of each colocated engine's memory are released, kept in a file beside the run, so
a trainer restarted after a kill wakes the engines it left released at ``rollout.server_urls``
(engines that outlive the trainer; a colocated recipe's start anew with every run).

Why a file: sglang 0.5.15 reports its released tags nowhere (``WeightUpdater.offload_tags`` is
read by no route), and resuming a tag that is not released ends the server (``set.remove`` in
``weight_updater.py:236``; the scheduler's exception handler), as releasing twice does (it
re-exports the released weights' buffers, ``weight_updater.py:215-217``). vLLM answers
``/is_sleeping`` and wakes only what sleeps: the start-up wait wakes it
(``server_pool.wait_until_healthy``), its record is kept but not needed.

Two phases, so the record is never wrong, only unsure: before a release or resume call reaches
an engine, the parts it moves are written as *in doubt* (synced to disk); once it answers,
their outcome. A trainer killed between the two finds them in doubt at start-up: nothing can
tell whether the engine acted, and guessing wrong ends it, so the start-up fails naming the
engine and what to do (restart it, then drop its entry). The window is one HTTP call."""

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from megatron_fork.atomic_files import write_text_atomically
from megatron_fork.rollout.http_client import ServerError

PARTS = ("weights", "kv_cache")
"""What is released and resumed, in the order a wake resumes them."""


@dataclass
class EngineMemory:
    """One engine's memory as the trainer knows it: ``released`` for sure; ``in_doubt``: parts
    a call was moving when the record was last written (released or not, nobody knows)."""

    released: set[str] = field(default_factory=set)
    in_doubt: set[str] = field(default_factory=set)

    @property
    def resident(self) -> bool:
        """Nothing released, nothing in doubt."""
        return not self.released and not self.in_doubt

    def listing(self) -> dict[str, list[str]]:
        return {
            "released": [p for p in PARTS if p in self.released],
            "in_doubt": [p for p in PARTS if p in self.in_doubt],
        }


class EngineStateUnknown(RuntimeError):
    """A trainer stopped during an engine's release or resume call: waking it could end it."""


class ReleasedRecord:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> dict[str, EngineMemory]:
        """url -> what its engine holds released (none recorded: {}). A record this code did
        not write raises ValueError naming the file."""
        if not self.path.is_file():
            return {}
        try:
            listing = json.loads(self.path.read_text())
            return {url: _engine_memory(entry) for url, entry in listing.items()}
        except (ValueError, AttributeError, TypeError) as error:
            raise ValueError(
                f"{self.path}: not a record of released engine memory ({error}); remove it "
                "once every engine at rollout.server_urls has been restarted"
            ) from error

    def write(self, engines: dict[str, EngineMemory]) -> None:
        """The whole record, on disk (synced) before this returns."""
        listing = {url: memory.listing() for url, memory in engines.items()}
        write_text_atomically(self.path, json.dumps(listing, sort_keys=True) + "\n", durable=True)


def _engine_memory(entry) -> EngineMemory:
    if isinstance(entry, list):  # the first version's record: the parts released
        entry = {"released": entry, "in_doubt": []}
    released, in_doubt = set(entry["released"]), set(entry["in_doubt"])
    if not released | in_doubt <= set(PARTS):
        raise ValueError(f"unknown parts {sorted((released | in_doubt) - set(PARTS))}")
    return EngineMemory(released, in_doubt)


def move_memory(memory: EngineMemory, parts: set[str], call, released: bool, save) -> None:
    """``call`` (a release or resume of ``parts``) with those parts saved as in doubt while it
    runs (``save()`` writes the record), then as ``released`` or not. A failure leaves them in
    doubt: the engine may have acted."""
    memory.released -= parts
    memory.in_doubt = set(parts)
    save()
    call()
    memory.in_doubt = set()
    if released:
        memory.released |= parts
    save()


def resume_released(memory: EngineMemory, client, save, parts=PARTS) -> None:
    """Each of ``parts`` that ``memory`` holds released back on ``client``'s engine, in
    ``PARTS`` order, one ``move_memory`` each."""
    for part in [p for p in PARTS if p in parts and p in memory.released]:
        move_memory(memory, {part}, partial(client.resume_memory, part), False, save)


def wake_released(record: ReleasedRecord, clients: list) -> None:
    """Resume, on each engine at ``clients``' URLs that reports no release of its own (sglang),
    the parts the record says a killed trainer left released, and continue its generation; each
    resume on record in two phases, as the trainer's own. The weights come back without values:
    the first sync fills them before anything is generated. Before any engine is touched:
    EngineStateUnknown names every engine left in doubt, and ServerError one that does not
    answer (restarted, or still starting); the record is kept."""
    engines = record.read()
    silent = [
        c for c in clients if not (c.reports_release or engines.get(c.url, EngineMemory()).resident)
    ]
    _refuse_unsure(record, engines, silent)
    for client in silent:
        resume_released(engines[client.url], client, lambda: record.write(engines))
        client.resume()
    record.write({})


def _refuse_unsure(record: ReleasedRecord, engines: dict, silent: list) -> None:
    unsure = [c.url for c in silent if engines[c.url].in_doubt]
    if unsure:
        raise EngineStateUnknown(
            f"the trainer stopped while releasing or resuming the memory of the engine(s) at "
            f"{', '.join(unsure)}: whether they did is unknown (sglang reports it nowhere, and "
            "resuming what is not released ends an engine). Restart those engines, then remove "
            f"their entries from {record.path} (or the file, once every engine is restarted)"
        )
    for client in silent:
        if not client.answers():
            raise ServerError(
                client.url,
                f"does not answer, and {record.path} says it was left with "
                f"{sorted(engines[client.url].released)} released: if it was restarted, remove "
                "its entry from that file; if it is still starting, start the run again once "
                "it answers",
            )
