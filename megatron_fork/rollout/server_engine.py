"""``RolloutEngine`` over rollout servers that speak sglang's protocol (sglang on GPUs, the CPU
server here): requests spread over the servers, weights broadcast to all of them.

- Generation: the batch is split over the servers that serve the expected weight version; a
  server that fails to answer (no answer, 5xx, timeout) is marked down and its requests go to
  the others; one that answers at another weight version is refused (its samples are never
  used) and marked for a resync; requests that come back aborted are sent again. A request
  the server refuses (4xx) raises: every server would refuse it.
- Weights: the first bucket of a sync restarts servers that are down (when a pool supervises
  them), (re)forms the weight-update group when its members changed or a sync failed (the
  trainer is rank 0), pauses generation (abort) and flushes caches; every bucket is announced to
  all servers, then broadcast; the version comes last (``/update_weight_version``), after which
  generation continues and every server must report that version. A failure anywhere in a sync
  raises at once and leaves every server marked for a full resync, so partial weights never
  serve; a restarted server serves only once it holds the current weights.
"""

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import torch

from megatron_fork.rollout.flattened_bucket import flatten_bucket
from megatron_fork.rollout.fp8 import fp8_named_tensors
from megatron_fork.rollout.http_client import ServerClient, ServerError
from megatron_fork.rollout.server_sync import form_weight_group, on_every_server
from megatron_fork.rollout.sglang_protocol import (
    UpdateWeightsFromDistributed,
)
from megatron_fork.rollout.types import GenerationRequest, Sample
from megatron_fork.rollout.weight_group import WeightGroup, dtype_name

MAX_ATTEMPTS = 4
"""Times a request is sent before the batch fails (server failures and aborts)."""


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
    ):
        """``pool`` (a ``ServerPool``) restarts servers that are down; without one a down
        server is only resynced. Servers must start at weight ``version``. ``fp8_block``: send
        linear weights as blockwise FP8 with their scales (engines serving FP8).
        ``flattened_buckets``: one uint8 broadcast per bucket (sglang's ``flattened_bucket``).
        ``tp_sizes``: each engine's TP size (its ranks in the weight-update group; default 1)."""
        self.fp8_block, self.flattened_buckets = fp8_block, flattened_buckets
        self.clients = [ServerClient(url, request_timeout_s, api_key) for url in urls]
        self.pool, self.master_address, self.backend = pool, master_address, backend
        self.tp_sizes = list(tp_sizes or [1] * len(urls))
        self._version = version
        self._state = [UP] * len(urls)
        self._group: WeightGroup | None = None
        self._syncing = False
        self.counters = {"requests_retried": 0, "servers_restarted": 0}

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
        if any(s.weight_version != self._version for s in samples):
            self._state[server] = RESYNC  # never train on another policy's samples
            return list(chunk)
        retry = []
        for j, sample in zip(chunk, samples, strict=True):
            if sample.finish_reason.kind == "abort":
                retry.append(j)
            else:
                results[j] = sample
        return retry

    def update_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | None = None
    ) -> None:
        bucket = [(name, tensor.detach().contiguous()) for name, tensor in named_tensors]
        if not bucket and version is None:
            return
        try:
            if not self._syncing:
                self._begin_sync()
            if bucket:
                self._send_bucket(bucket)
            if version is not None:
                self._finish_sync(version)
        except BaseException:
            self._abandon_sync()
            raise

    def _send_bucket(self, bucket: list) -> None:
        if self.fp8_block is not None:
            bucket = list(fp8_named_tensors(bucket, self.fp8_block))
        update = UpdateWeightsFromDistributed(
            names=tuple(name for name, _ in bucket),
            dtypes=tuple(dtype_name(t.dtype) for _, t in bucket),
            shapes=tuple(tuple(t.shape) for _, t in bucket),
            group_name=self._group.name,
            load_format="flattened_bucket" if self.flattened_buckets else None,
        )
        wire = [flatten_bucket(bucket)] if self.flattened_buckets else [t for _, t in bucket]
        on_every_server(
            self.clients,
            lambda i, client: client.update_weights_from_distributed(update),
            during=lambda: self._group.broadcast(wire),
        )

    def _begin_sync(self) -> None:
        restarted = self._restart_down_servers()
        if self._group is None or restarted:
            self._drop_group()
            self._group = form_weight_group(
                self.clients, self.tp_sizes, self.master_address, self.backend
            )
        for client in self.clients:
            client.pause("abort")
            self._flush(client)
        self._syncing = True

    def _restart_down_servers(self) -> bool:
        down = [i for i, state in enumerate(self._state) if state == DOWN]
        if self.pool is None:
            return bool(down)  # not ours to restart: a fresh group, then a full resync
        for index in down:
            url = self.pool.restart(index)
            old = self.clients[index]
            self.clients[index] = ServerClient(url, old.timeout_s, old.api_key)
            self._state[index] = RESYNC
            self.counters["servers_restarted"] += 1
        return bool(down)

    def _drop_group(self) -> None:
        if self._group is None:
            return
        for client, state in zip(self.clients, self._state, strict=True):
            if state != DOWN:
                try:
                    body = {"group_name": self._group.name}
                    client.call("/destroy_weights_update_group", body)
                except ServerError:
                    pass  # it will be restarted or fail the next group's init, by name
        self._group.destroy()
        self._group = None

    def _abandon_sync(self) -> None:
        """After a failed sync: servers hold partial weights, the group may be broken, and a
        server that died is restarted at the next sync."""
        if self._group is not None:
            self._group.destroy()
        self._syncing, self._group = False, None
        for i, client in enumerate(self.clients):
            dead = self.pool is not None and not self.pool.alive(i)
            if dead or not client.answers():
                self._state[i] = DOWN
            elif self._state[i] != DOWN:
                self._state[i] = RESYNC

    @staticmethod
    def _flush(client: ServerClient, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.flush_cache()
                return
            except ServerError as error:
                if error.status != 400 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _finish_sync(self, version: int) -> None:
        on_every_server(
            self.clients,
            lambda i, client: client.call("/update_weight_version", {"new_version": str(version)}),
            during=lambda: None,
        )
        self._version, self._syncing = version, False
        for i, client in enumerate(self.clients):
            client.resume()
            reported = client.weight_version()
            if reported != version:
                raise StaleWeightsError(f"{client.url} reports version {reported} after sync")
            self._state[i] = UP

    def close(self) -> None:
        if self._group is not None:
            self._group.destroy()
            self._group = None
        if self.pool is not None:
            self.pool.close()
