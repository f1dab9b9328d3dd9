"""One trainer process's side of a weight update on several servers at once: every server gets
its HTTP call without waiting (each blocks in the collective), the trainer takes part in the
collective here, and the first failure on any side is raised at once, not after the others time
out. Used by each pipeline stage's sender (``stage_sender.py``) for its own group; the sglang
routes of it are ``SglangServers`` (vLLM's: ``vllm_sync.VllmServers``)."""

import threading
import uuid
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

import torch

from megatron_fork.rollout.flattened_bucket import flatten_bucket
from megatron_fork.rollout.http_client import ServerClient, ServerError
from megatron_fork.rollout.sglang_protocol import (
    DEFAULT_GROUP_NAME,
    InitWeightsUpdateGroup,
    UpdateWeightsFromDistributed,
)
from megatron_fork.rollout.weight_group import (
    WeightGroup,
    dtype_name,
    join_weight_group,
    master_store,
)


def _in_daemon_thread(function) -> Future:
    """``function()`` in a daemon thread (one stuck in a collective never blocks exit)."""
    future = Future()

    def run():
        try:
            future.set_result(function())
        except BaseException as error:  # handed to the waiting caller
            future.set_exception(error)

    threading.Thread(target=run, daemon=True).start()
    return future


def on_every_server(
    clients: list[ServerClient], request, during, timeout_s: float | None = None
) -> object:
    """``request(index, client)`` for every server and ``during()`` (the trainer's side of the
    collective), concurrently; ``during``'s result once all succeed, else the first error
    (TimeoutError when ``timeout_s`` passes first)."""
    pool = ThreadPoolExecutor(max(1, len(clients)))
    try:
        futures = [pool.submit(request, i, client) for i, client in enumerate(clients)]
        own = _in_daemon_thread(during)
        done, pending = wait([*futures, own], timeout=timeout_s, return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                raise future.exception()
        if pending:
            raise TimeoutError(f"{len(pending)} sides of a weight-group call after {timeout_s} s")
        return own.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def rank_offsets(tp_sizes: list[int]) -> list[int]:
    """Engine i's first rank in the group: the trainer is rank 0, then each engine's TP ranks."""
    offsets, next_rank = [], 1
    for size in tp_sizes:
        offsets.append(next_rank)
        next_rank += size
    return offsets


def form_weight_group(
    clients: list[ServerClient],
    tp_sizes: list[int],
    address: str,
    backend: str,
    prefix: str = DEFAULT_GROUP_NAME,
) -> WeightGroup:
    """A fresh group of this trainer process (rank 0, hosting the store on a free port of
    ``address``) and every server's TP ranks, under a name of its own: ``prefix`` and a random
    tail (torch refuses a group name twice in a process, a failed group cannot always be torn
    down, and a server keeps one group per name, so several senders' groups live side by side)."""
    world = 1 + sum(tp_sizes)
    store = master_store(address, world)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    inits = [
        InitWeightsUpdateGroup(address, store.port, offset, world, group_name=name, backend=backend)
        for offset in rank_offsets(tp_sizes)
    ]
    return on_every_server(
        clients,
        lambda i, client: client.init_weights_update_group(inits[i]),
        during=lambda: join_weight_group(store, 0, world, name, backend),
    )


def release_group_on_servers(clients: list[ServerClient], name: str, timeout_s: float) -> None:
    """Best effort, all servers at once: each server drops group ``name``
    (``/destroy_weights_update_group``). A server that is gone, restarted (it answers 400: no
    such group) or stuck is left alone: a restart drops its groups anyway."""

    def release(client: ServerClient) -> None:
        try:
            client.call("/destroy_weights_update_group", {"group_name": name}, timeout_s)
        except ServerError:
            pass

    with ThreadPoolExecutor(max(1, len(clients))) as pool:
        list(pool.map(release, clients))


class SglangServers:
    """A stage sender's weight routes on sglang servers: named groups (one per sender, side by
    side on a server), ``/update_weights_from_distributed`` per bucket, a group dropped by
    name (``/destroy_weights_update_group``)."""

    name = "sglang"
    client = ServerClient

    def form_group(self, clients, tp_sizes, address: str, plan, prefix: str) -> WeightGroup:
        return form_weight_group(clients, list(tp_sizes), address, plan.backend, prefix)

    def send(self, clients, group: WeightGroup, bucket: list[tuple[str, torch.Tensor]], plan):
        update = UpdateWeightsFromDistributed(
            names=tuple(name for name, _ in bucket),
            dtypes=tuple(dtype_name(t.dtype) for _, t in bucket),
            shapes=tuple(tuple(t.shape) for _, t in bucket),
            group_name=group.name,
            load_format="flattened_bucket" if plan.flattened_buckets else None,
        )
        wire = [flatten_bucket(bucket)] if plan.flattened_buckets else [t for _, t in bucket]
        on_every_server(
            clients,
            lambda i, client: client.update_weights_from_distributed(update),
            during=lambda: group.broadcast(wire),
        )

    def begin_stage(self, clients) -> None:
        """Nothing: sglang has no weight-update session (generation is paused)."""

    def end_stage(self, clients, group: WeightGroup, sole_sender: bool, timeout_s: float):
        """Nothing: a sender's named group stays beside the others'; False (not released)."""
        return False

    def release_stale(self, clients, group_name: str, timeout_s: float) -> None:
        release_group_on_servers(clients, group_name, timeout_s)

    def release_with(self, clients, group: WeightGroup, timeout_s: float) -> None:
        """The group left here and on every server together (the end of a run)."""

        def release(i, client):
            client.call("/destroy_weights_update_group", {"group_name": group.name}, timeout_s)

        on_every_server(clients, release, during=group.destroy, timeout_s=timeout_s)
