"""``RolloutEngine`` over rollout servers that speak sglang's protocol (sglang on GPUs, the CPU
server here): requests spread over the servers, weights broadcast to all of them.

- Generation: the batch is split over the servers that are up and at the expected weight
  version; a server that fails or times out is marked down and its requests go to the others;
  requests that come back aborted are sent again. A sample whose weight version is not the
  expected one is refused (``StaleWeightsError``): it would train on the wrong policy.
- Weights: the first bucket of a sync restarts servers that are down (when a pool supervises
  them), (re)forms the weight-update group when its members changed (the trainer is rank 0),
  pauses generation (abort) and flushes caches; every bucket is announced to all servers, then
  broadcast tensor by tensor; the last bucket carries the version, after which generation
  continues and every server must report that version. A restarted server so serves again
  only once it holds the current weights.
"""

import socket
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import torch

from megatron_fork.rollout.flattened_bucket import flatten_bucket
from megatron_fork.rollout.fp8 import fp8_named_tensors
from megatron_fork.rollout.http_client import ServerClient, ServerError
from megatron_fork.rollout.sglang_protocol import (
    DEFAULT_GROUP_NAME,
    InitWeightsUpdateGroup,
    UpdateWeightsFromDistributed,
)
from megatron_fork.rollout.types import GenerationRequest, Sample
from megatron_fork.rollout.weight_group import WeightGroup, dtype_name, join_weight_group

MAX_ATTEMPTS = 4
"""Times a request is sent before the batch fails (server failures and aborts)."""


class StaleWeightsError(RuntimeError):
    """A server answered with weights other than the ones the trainer synced last."""


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


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
    ):
        """``pool`` (a ``ServerPool``) restarts servers that are down; without one they stay
        down. Servers must start at weight ``version``. ``fp8_block``: send linear weights as
        blockwise FP8 with their scales (for engines serving FP8). ``flattened_buckets``: one
        uint8 broadcast per bucket (sglang's ``flattened_bucket``) instead of one per tensor."""
        self.fp8_block, self.flattened_buckets = fp8_block, flattened_buckets
        self.clients = [ServerClient(url, request_timeout_s) for url in urls]
        self.pool, self.master_address, self.backend = pool, master_address, backend
        self._version = version
        self._up = [True] * len(urls)
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
        servers = [i for i, up in enumerate(self._up) if up]
        if not servers:
            raise RuntimeError("no rollout server is up: " + ", ".join(c.url for c in self.clients))
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
                except ServerError:
                    self._up[server] = False  # restarted at the next weight sync
                    retry += chunk
                    continue
                retry += self._accept(server, chunk, samples, results)
        return retry

    def _accept(self, server: int, chunk: list[int], samples: list[Sample], results) -> list:
        retry = []
        for j, sample in zip(chunk, samples, strict=True):
            if sample.finish_reason.kind == "abort":
                retry.append(j)
            elif sample.weight_version != self._version:
                raise StaleWeightsError(
                    f"{self.clients[server].url} answered with weight version "
                    f"{sample.weight_version}, the trainer synced {self._version}"
                )
            else:
                results[j] = sample
        return retry

    def update_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | None = None
    ) -> None:
        bucket = [(name, tensor.detach().contiguous()) for name, tensor in named_tensors]
        if self.fp8_block is not None:
            bucket = list(fp8_named_tensors(bucket, self.fp8_block))
        if not bucket and version is None:
            return
        if not self._syncing:
            self._begin_sync()
        if not bucket:  # the version alone, after the last bucket
            self._on_every_server(
                lambda i, client: client.call("/update_weight_version", {"new_version": version}),
                during=lambda: None,
            )
            self._finish_sync(version)
            return
        update = UpdateWeightsFromDistributed(
            names=tuple(name for name, _ in bucket),
            dtypes=tuple(dtype_name(t.dtype) for _, t in bucket),
            shapes=tuple(tuple(t.shape) for _, t in bucket),
            weight_version=None if version is None else str(version),
            load_format="flattened_bucket" if self.flattened_buckets else None,
        )
        wire = [flatten_bucket(bucket)] if self.flattened_buckets else [t for _, t in bucket]
        self._on_every_server(
            lambda i, client: client.update_weights_from_distributed(update),
            during=lambda: self._group.broadcast(wire),
        )
        if version is not None:
            self._finish_sync(version)

    def _begin_sync(self) -> None:
        restarted = self._restart_down_servers()
        if self._group is None or restarted:
            self._form_group()
        for client in self.clients:
            client.pause("abort")
            self._flush(client)
        self._syncing = True

    def _restart_down_servers(self) -> bool:
        down = [i for i, up in enumerate(self._up) if not up]
        if down and self.pool is None:
            raise RuntimeError(f"rollout servers {down} are down and no pool restarts them")
        for index in down:
            url = self.pool.restart(index)
            self.clients[index] = ServerClient(url, self.clients[index].timeout_s)
            self.counters["servers_restarted"] += 1
        return bool(down)

    def _form_group(self) -> None:
        """Every server joins a fresh group with the trainer as rank 0."""
        if self._group is not None:
            for i, client in enumerate(self.clients):
                if self._up[i]:
                    client.call("/destroy_weights_update_group", {"group_name": DEFAULT_GROUP_NAME})
        port = _free_port(self.master_address)
        world = 1 + len(self.clients)
        inits = [
            InitWeightsUpdateGroup(self.master_address, port, 1 + i, world, backend=self.backend)
            for i in range(len(self.clients))
        ]

        def join():
            self._group = join_weight_group(
                self.master_address, port, 0, world, DEFAULT_GROUP_NAME, self.backend
            )

        self._on_every_server(
            lambda i, client: client.init_weights_update_group(inits[i]), during=join
        )

    def _on_every_server(self, request, during) -> None:
        """``request(index, client)`` on every server without waiting, ``during()`` here (the
        trainer's side of the collective), then every answer (an error raises)."""
        with ThreadPoolExecutor(len(self.clients)) as pool:
            futures = [pool.submit(request, i, client) for i, client in enumerate(self.clients)]
            during()
            for future in futures:
                future.result()

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
        self._version, self._syncing = version, False
        for i, client in enumerate(self.clients):
            client.resume()
            reported = client.weight_version()
            if reported != version:
                raise StaleWeightsError(f"{client.url} reports version {reported} after sync")
            self._up[i] = True

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
