"""A stage sender's weight routes on vLLM engines (``VllmServers``): the trainer process is rank
0 of each engine's weight-transfer group, every engine worker joins at its ``rank_offset``;
each bucket is announced by ``/update_weights`` on every engine while it is broadcast.

Differences from sglang that shape this, read from vLLM's source (../shared/VLLM_API.md):
- An engine has ONE weight-transfer group, no name. With pipeline stages sending in turn, each
  stage's leader forms the group at its turn and releases it after its buckets
  (``StageSender.begin(..., sole_sender=False)``); a single sender keeps it across syncs.
- The rendezvous: on GPUs vLLM's ``nccl_unique_id_b64`` (the trainer mints the id and joins
  with torch's own NCCL bindings, ``nccl_unique_id_group.py``: no vLLM in the trainer's
  environment); on CPU the project's server meets the trainer in a TCP store over gloo.
- Packed buckets (vLLM's ``packed``) are chosen per group (``init_info``), and arrive as
  uint8 chunks cut by ``vllm_protocol.packed_chunks``.
- A weight-update session (``/start_weight_update`` .. ``/finish_weight_update``) per sender
  and sync; the controller sets the version once every stage is in
  (``/update_weight_version``). A group is released with ``/shutdown_weight_transfer_engine``
  between sessions (vLLM refuses it during one; a second init would replace the group without
  destroying the old communicator).
"""

import base64
import uuid
from concurrent.futures import ThreadPoolExecutor

import torch

from megatron_fork.rollout.flattened_bucket import flatten_bucket
from megatron_fork.rollout.http_client import ServerError
from megatron_fork.rollout.server_sync import on_every_server, rank_offsets
from megatron_fork.rollout.vllm_client import VllmClient
from megatron_fork.rollout.vllm_protocol import (
    TRANSFER_GROUP_NAME_KEY,
    TRANSFER_STORE_PREFIX,
    InitInfo,
    UpdateInfo,
    packed_chunks,
)
from megatron_fork.rollout.weight_group import dtype_name, join_weight_group, master_store


class VllmServers:
    name = "vllm"
    client = VllmClient

    def form_group(self, clients: list[VllmClient], tp_sizes, address: str, plan, prefix: str):
        """A fresh group of this process (rank 0) and every engine's workers (as many as each
        engine reports: ``/get_world_size``)."""
        sizes = [client.world_size() for client in clients]
        world = 1 + sum(sizes)
        packing = {
            "packed": plan.flattened_buckets,
            "packed_buffer_size_bytes": plan.packed_buffer_bytes,
        }
        if plan.backend == "nccl":
            from megatron_fork.rollout.nccl_unique_id_group import UniqueIdGroup, new_unique_id

            unique_id = new_unique_id()
            encoded = base64.b64encode(unique_id).decode()
            infos = [
                InitInfo(offset, world, nccl_unique_id_b64=encoded, **packing)
                for offset in rank_offsets(sizes)
            ]
            name = f"{prefix}_{uuid.uuid4().hex[:12]}"
            device = torch.device("cuda", torch.cuda.current_device())  # this thread's: the rank's
            join = lambda: UniqueIdGroup.join(unique_id, world, name, device)  # noqa: E731
        else:
            store = master_store(address, world)
            name = f"{prefix}_{uuid.uuid4().hex[:12]}"  # torch wants a new name each time
            store.set(TRANSFER_GROUP_NAME_KEY, name)  # the servers join under the same name
            infos = [
                InitInfo(offset, world, master_address=address, master_port=store.port, **packing)
                for offset in rank_offsets(sizes)
            ]
            join = lambda: join_weight_group(  # noqa: E731
                store, 0, world, name, "gloo", store_prefix=TRANSFER_STORE_PREFIX
            )
        return on_every_server(
            clients, lambda i, client: client.init_weight_transfer(infos[i]), during=join
        )

    def send(self, clients: list[VllmClient], group, bucket: list[tuple[str, torch.Tensor]], plan):
        update = UpdateInfo(
            names=tuple(name for name, _ in bucket),
            dtype_names=tuple(dtype_name(t.dtype) for _, t in bucket),
            shapes=tuple(tuple(t.shape) for _, t in bucket),
        )
        if plan.flattened_buckets:
            sizes = [t.numel() * t.element_size() for _, t in bucket]
            chunks = packed_chunks(sizes, plan.packed_buffer_bytes)
            wire = [flatten_bucket([bucket[i] for i in chunk]) for chunk in chunks]
        else:
            wire = [t for _, t in bucket]
        on_every_server(
            clients,
            lambda i, client: client.update_weights(update),
            during=lambda: group.broadcast(wire),
        )

    def begin_stage(self, clients: list[VllmClient]) -> None:
        """This sender's weight-update session on every engine (after its group is formed)."""
        on_every_server(clients, lambda i, client: client.start_session(), during=lambda: None)

    def end_stage(self, clients: list[VllmClient], group, sole_sender: bool, timeout_s: float):
        """This sender's buckets are in: its session ends on every engine. When other stages
        send too, the group is released (``/shutdown_weight_transfer_engine``: init alone would
        leave the old communicator on the engine) for the next stage to form its own; True
        when it was."""
        on_every_server(clients, lambda i, client: client.finish_session(), during=lambda: None)
        if sole_sender:
            return False
        self.release_with(clients, group, timeout_s)
        return True

    def release_stale(self, clients: list[VllmClient], group_name: str, timeout_s: float):
        """Best effort after a failure: an open session finished (its partial weights are
        replaced in full next), then the engine's group shut down (vLLM aborts its
        communicator, no peer needed); an engine gone or stuck is left to its restart."""

        def release(client: VllmClient) -> None:
            for path in ("/finish_weight_update", "/shutdown_weight_transfer_engine"):
                try:
                    client.call(path, {}, timeout_s)
                except ServerError:
                    pass

        with ThreadPoolExecutor(max(1, len(clients))) as pool:
            list(pool.map(release, clients))

    def release_with(self, clients: list[VllmClient], group, timeout_s: float) -> None:
        """The end of a run: every engine drops its group while this side leaves it."""

        def release(i, client: VllmClient):
            try:
                client.shutdown_weight_transfer(timeout_s)
            except ServerError:
                pass  # a session still open or an engine gone: its group goes with it

        on_every_server(clients, release, during=group.destroy, timeout_s=timeout_s)
