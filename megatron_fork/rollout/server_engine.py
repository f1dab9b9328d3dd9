"""``RolloutEngine`` over rollout servers that speak sglang's protocol (sglang on GPUs, the CPU
server here): requests spread over the servers; the controller's side of a weight sync.

- Generation: the batch is split over the servers that serve the expected weight version; a
  server that fails to answer (no answer, 5xx, timeout) is marked down and its requests go to
  the others; one that answers at another weight version is refused (its samples are never
  used) and marked for a resync; requests that come back aborted are sent again. A request
  the server refuses (4xx) raises: every server would refuse it.
- Weights, the controller's side (rank 0): ``begin_sync`` restarts servers that are down (when a
  pool supervises them), pauses generation (abort), flushes caches and hands out a ``SyncPlan``
  (servers, options, and an epoch that tells senders to form their groups anew when members
  changed or a sync failed); the buckets are sent by each pipeline stage's own
  ``StageSender`` (``stage_sender.py``, driven by ``trainer/weight_sync.py``); ``finish_sync``
  sets the version (``/update_weight_version``) once every stage's last bucket is in, after
  which generation continues and every server must report that version. ``abandon_sync`` after
  a failure anywhere leaves every server marked for a full resync, so partial weights never
  serve; a restarted server serves only once it holds the current weights.
- Colocated engines (``rollout.placement=colocated``): ``release_memory`` after generation
  (paused, everything released); ``begin_sync`` resumes the weights' memory before the
  buckets and ``finish_sync`` the KV cache before generation continues, on the servers that
  released them (a restarted server released nothing).
- ``update_weights`` runs a whole sync in this process through one sender of its own (a model
  held in one process, e.g. tests and ``tools/bench_weight_sync.py``).
"""

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import torch

from megatron_fork.rollout.http_client import ServerError
from megatron_fork.rollout.released_memory import (
    PARTS,
    EngineMemory,
    move_memory,
    resume_released,
)
from megatron_fork.rollout.server_kinds import SERVERS
from megatron_fork.rollout.server_sync import on_every_server
from megatron_fork.rollout.stage_sender import StageSender, SyncPlan
from megatron_fork.rollout.types import GenerationRequest, Sample
from megatron_fork.rollout.vllm_protocol import DEFAULT_PACKED_BUFFER_BYTES

MAX_ATTEMPTS = 4
"""Times a request is sent before the batch fails (server failures and aborts)."""


RESTART_ADVICE = (
    "restart it and start the run again (a colocated recipe's engines restart with its job; "
    "engines that outlive the trainer: also remove its entry from released_engines.json in "
    "the output directory)"
)


class StaleWeightsError(RuntimeError):
    """A server reports weights other than the ones the trainer synced last."""


UP, RESYNC, DOWN = "up", "resync", "down"
"""Server states: serving the expected version; alive but needing the full weights; needing a
restart (then a resync)."""


class ServerRolloutEngine:
    def __init__(
        self,
        urls: list[str],
        pool=None,
        request_timeout_s: float = 600.0,
        master_address: str = "127.0.0.1",
        backend: str = "gloo",
        version: int = 0,
        fp8_block: int | None = None,
        flattened_buckets: bool = False,
        tp_sizes: list[int] | None = None,
        api_key: str | None = None,
        protocol: str = "sglang",
        packed_buffer_bytes: int = DEFAULT_PACKED_BUFFER_BYTES,
    ):
        """``pool`` (a ``ServerPool``) restarts servers that are down; without one a down
        server is only resynced. Servers must start at weight ``version``. ``fp8_block``: send
        linear weights as blockwise FP8 with their scales (engines serving FP8).
        ``flattened_buckets``: one uint8 broadcast per bucket (sglang's ``flattened_bucket``).
        ``tp_sizes``: each engine's TP size (its ranks in the weight-update group; default 1).
        ``master_address``: where ``update_weights``' own sender hosts its group's store
        (``StageSender``); stage leaders of a distributed sync use their own. ``protocol``:
        what the servers speak, "sglang" or "vllm" (``stage_sender.SERVERS``);
        ``packed_buffer_bytes``: vLLM's packed chunk size (at least the weight bucket)."""
        if protocol not in SERVERS:
            raise ValueError(f"rollout servers speak {sorted(SERVERS)}, not {protocol!r}")
        self.protocol, self.packed_buffer_bytes = protocol, packed_buffer_bytes
        self.fp8_block, self.flattened_buckets = fp8_block, flattened_buckets
        client = SERVERS[protocol].client
        self.clients = [client(url, request_timeout_s, api_key) for url in urls]
        self.pool, self.backend, self.api_key = pool, backend, api_key
        self.request_timeout_s = request_timeout_s
        self.tp_sizes = list(tp_sizes or [1] * len(urls))
        self._version = version
        self._state = [UP] * len(urls)
        self._epoch = 0
        self._syncing = False
        self._sender = StageSender(master_address)
        self.counters = {"requests_retried": 0, "servers_restarted": 0}
        self._memory = [EngineMemory() for _ in urls]  # what each released (colocated)
        self.released_record = None
        """A ``released_memory.ReleasedRecord`` kept up to date (colocated, set by the loop)."""

    @property
    def version(self) -> int:
        return self._version

    def generate(self, requests: list[GenerationRequest]) -> list[Sample]:
        results: list[Sample | None] = [None] * len(requests)
        pending, attempt = list(range(len(requests))), 0
        while pending:
            attempt += 1
            if attempt > MAX_ATTEMPTS:
                raise RuntimeError(f"{len(pending)} requests failed {MAX_ATTEMPTS} times")
            pending = self._generate_round(requests, pending, results)
            self.counters["requests_retried"] += len(pending)
        return results

    def _generate_round(self, requests, pending: list[int], results: list) -> list[int]:
        """Send ``pending`` over the servers that are up; the indices to send again."""
        servers = [i for i, state in enumerate(self._state) if state == UP]
        if not servers:
            states = zip(self.clients, self._state, strict=True)
            listing = ", ".join(f"{client.url} ({state})" for client, state in states)
            raise RuntimeError(f"no rollout server serves the current weights: {listing}")
        work = [(s, pending[k :: len(servers)]) for k, s in enumerate(servers)]
        retry = []
        with ThreadPoolExecutor(len(servers)) as pool:
            sent = [
                (s, chunk, pool.submit(self.clients[s].generate, [requests[j] for j in chunk]))
                for s, chunk in work
                if chunk
            ]
            for server, chunk, future in sent:
                try:
                    samples = future.result()
                except ServerError as error:
                    if error.status is not None and 400 <= error.status < 500:
                        raise  # the request is refused: every server would refuse it
                    self._state[server] = DOWN  # restarted at the next weight sync
                    retry += chunk
                    continue
                retry += self._accept(server, chunk, samples, results)
        return retry

    def _accept(self, server: int, chunk: list[int], samples: list[Sample], results) -> list:
        finished = [s for s in samples if s.finish_reason.kind != "abort"]  # aborts are resent
        if any(s.weight_version != self._version for s in finished):
            self._state[server] = RESYNC  # never train on another policy's samples
            return list(chunk)
        retry = []
        for j, sample in zip(chunk, samples, strict=True):
            if sample.finish_reason.kind == "abort":
                retry.append(j)
            else:
                results[j] = sample
        return retry

    def begin_sync(self) -> SyncPlan:
        """The controller's first step of a sync (rank 0, before any stage sends): servers
        that are down are restarted (when a pool supervises them), generation is paused (abort)
        and caches flushed (vLLM: and a weight-update session opened); the plan every stage's
        sender follows. A failure abandons the sync."""
        try:
            self.resume_memory("weights")  # colocated: the weights' memory, not their values
            changed = self._restart_down_servers()  # those down, or that died while released
            if self._prepare_servers() or changed:
                self._epoch += 1  # the group's members changed: every sender forms it anew
        except BaseException:
            self.abandon_sync()
            raise
        self._syncing = True
        return SyncPlan(
            urls=tuple(client.url for client in self.clients),
            tp_sizes=tuple(self.tp_sizes),
            epoch=self._epoch,
            backend=self.backend,
            fp8_block=self.fp8_block,
            flattened_buckets=self.flattened_buckets,
            request_timeout_s=self.request_timeout_s,
            api_key=self.api_key,
            protocol=self.protocol,
            packed_buffer_bytes=self.packed_buffer_bytes,
        )

    def finish_sync(self, version: int) -> None:
        """The controller's last step, once every stage's last bucket is in: the version on
        every server (sglang: ``/update_weight_version``; vLLM: ``/finish_weight_update``),
        then generation continues and every server must report that version. A failure
        abandons the sync."""
        try:
            on_every_server(
                self.clients,
                lambda i, client: client.commit_version(version),
                during=lambda: None,
            )
            self._version, self._syncing = version, False
            lost = self.resume_memory("kv_cache")  # colocated: before generation continues
            for i, client in enumerate(self.clients):
                if i in lost or not self._memory[i].resident:  # restarted at the next sync
                    continue
                client.resume()
                reported = client.weight_version()
                if reported != version:
                    raise StaleWeightsError(f"{client.url} reports version {reported} after sync")
                self._state[i] = UP
        except BaseException:
            self.abandon_sync()
            raise

    def abandon_sync(self) -> None:
        """After a failed sync (anywhere, any stage): servers hold partial weights and the
        groups may be broken, so every server needs a full resync over groups formed anew
        (the epoch moves on), and a server that died is restarted at the next sync."""
        self._syncing = False
        self._epoch += 1
        for i, client in enumerate(self.clients):
            dead = self.pool is not None and not self.pool.alive(i)
            if dead or not client.answers():
                self._state[i] = DOWN
            elif self._state[i] != DOWN:
                self._state[i] = RESYNC

    def update_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | None = None
    ) -> None:
        """The whole sync in this process (one sender: a trainer without pipeline stages, or
        a model held here): the first bucket begins it, a ``version`` ends it."""
        bucket = [(name, tensor.detach().contiguous()) for name, tensor in named_tensors]
        if not bucket and version is None:
            return
        try:
            if not self._syncing:
                self._sender.begin(self.begin_sync())
            if bucket:
                self._sender.send(bucket)
            if version is not None:
                self._sender.finish()
        except BaseException:
            self._sender.abandon()
            if self._syncing:
                self.abandon_sync()
            raise
        if version is not None:
            self.finish_sync(version)

    def release_memory(self) -> None:
        """Colocated engines hand their memory to the trainer (all of it: weights, KV cache,
        CUDA graphs) and stay paused until the next sync's ``finish_sync``. An engine that
        fails to release, was taken as down (it may still hold its memory, beside which the
        trainer would run out of it) or is in doubt is stopped by its pool now (restarted at
        the next sync, synced in full before it serves); at fixed URLs a down engine is
        released like the others, and the step fails naming one that does not or is in
        doubt. Releasing what is released ends an sglang engine (torch_memory_saver's "Cannot
        pause allocation that is not active"): a part left released alone (a sync that failed
        half-way) is resumed first."""
        self.counters["memory_releases"] = self.counters.get("memory_releases", 0) + 1
        for i, client in enumerate(self.clients):
            memory = self._memory[i]
            if memory.released == set(PARTS):
                continue
            if self.pool is not None and (self._state[i] == DOWN or memory.in_doubt):
                self._stop_in_pool(i)
                continue
            try:
                if memory.in_doubt:
                    raise ServerError(client.url, f"{sorted(memory.in_doubt)} in doubt")
                resume_released(memory, client, self._record)
                move_memory(memory, set(PARTS), client.release_memory, True, self._record)
            except ServerError as error:
                self._state[i] = DOWN
                self._stop_unreleased(i, error)

    def resume_memory(self, part: str) -> list[int]:
        """``part`` ("weights" or "kv_cache") back on every server that released it; values
        come back only with the weights a sync sends. A server that fails (it died while
        released) is taken as down: ``begin_sync`` restarts it before the buckets when a pool
        supervises it (fresh, resident, synced in full) and ``finish_sync`` leaves it out of
        generation until then; at fixed URLs it fails the sync, naming it (buckets into
        released memory, or generation on it, would end it). Returns the servers that
        failed."""
        lost = []
        for i, client in enumerate(self.clients):
            if part not in self._memory[i].released:
                continue  # a pool's down engines were stopped: nothing released
            try:
                resume_released(self._memory[i], client, self._record, parts=(part,))
            except ServerError:
                self._state[i] = DOWN
                lost.append(i)
        if lost and self.pool is None:
            urls = ", ".join(self.clients[i].url for i in lost)
            raise RuntimeError(
                f"the colocated engine(s) at {urls} did not resume their {part} memory: "
                f"{RESTART_ADVICE}"
            )
        return lost

    def _stop_unreleased(self, index: int, error: ServerError) -> None:
        if self.pool is None:
            raise RuntimeError(
                f"the colocated engine at {self.clients[index].url} did not release its memory "
                f"({error}); the trainer cannot take its GPUs back beside it: {RESTART_ADVICE}"
            ) from error
        self._stop_in_pool(index)

    def _stop_in_pool(self, index: int) -> None:
        """Its memory freed now; started again (fresh, resident) at the next sync."""
        self.pool.stop(index)
        self._memory[index] = EngineMemory()
        self._record()

    def _record(self) -> None:
        if self.released_record is not None:
            urls = [client.url for client in self.clients]
            self.released_record.write(dict(zip(urls, self._memory, strict=True)))

    def _prepare_servers(self) -> bool:
        """Every server paused and flushed for the sync. One that does not answer (a vLLM
        engine still stuck in the collective of a sync that failed answers no engine-core
        call) or fails to pause is taken as down: a pool restarts it and it is prepared anew
        (True: the members changed); at fixed URLs the sync fails."""
        failed = []
        for i, client in enumerate(self.clients):
            try:
                if not client.answers():
                    raise ServerError(client.url, "does not answer")
                client.prepare_for_update()
            except ServerError:
                if self.pool is None:
                    raise
                failed.append(i)
        if not failed:
            return False
        for i in failed:
            self._state[i] = DOWN
        self._restart_down_servers()
        for i in failed:
            self.clients[i].prepare_for_update()
        return True

    def _restart_down_servers(self) -> bool:
        down = [i for i, state in enumerate(self._state) if state == DOWN]
        if self.pool is None:
            return bool(down)  # not ours to restart: a fresh group, then a full resync
        for index in down:
            url = self.pool.restart(index)
            old = self.clients[index]
            self.clients[index] = SERVERS[self.protocol].client(url, old.timeout_s, old.api_key)
            self._state[index], self._memory[index] = RESYNC, EngineMemory()  # fresh
            self.counters["servers_restarted"] += 1
        return bool(down)

    def close(self) -> None:
        self._sender.close()
        if self.pool is not None:
            self.pool.close()
