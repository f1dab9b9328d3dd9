"""The sending side of a weight sync to rollout servers, one per trainer process that sends: each
pipeline stage's leader broadcasts its own stage straight to the servers, so no stage's weights
pass through another process or through host memory.

A sender forms a weight-update group of its own with every server's TP ranks: itself rank 0,
hosting the rendezvous store on its own address, under a name of its own (sglang keeps one group
per ``group_name`` and its ``/update_weights_from_distributed`` receives from src=0 of the named
group; a vLLM engine keeps one group, formed anew by each sender at its turn when several
stages send). For each bucket it announces names, dtypes and shapes to every server and
broadcasts the tensors from the device they live on (FP8 and flattened buckets are made here,
per bucket). The routes of each server kind are in ``server_kinds.SERVERS``.

What a sender does NOT do: pause, flush, versions and server states belong to the controller
(``server_engine.ServerRolloutEngine``, rank 0), which hands every sender a ``SyncPlan`` for
each sync; and senders never send at the same time as each other: a server handles one weight
request at a time, so two stages posting at once could leave server A receiving on one group
while server B receives on the other, each waiting for the other forever. The caller makes the
stages take turns (``trainer/weight_sync.py``).
"""

import socket
from dataclasses import dataclass, field

import torch

from megatron_fork.rollout.fp8 import fp8_named_tensors
from megatron_fork.rollout.server_kinds import SERVERS
from megatron_fork.rollout.sglang_protocol import DEFAULT_GROUP_NAME
from megatron_fork.rollout.vllm_protocol import DEFAULT_PACKED_BUFFER_BYTES
from megatron_fork.rollout.weight_group import WeightGroup

LOCAL_HOST_NAME = "hostname"
"""An address that stands for this host's name, resolved in each process (a stage leader on
another node hosts its store there, not on rank 0's node)."""
RELEASE_TIMEOUT_S = 10.0
"""How long a server may take to drop an old group before it is left alone."""


def local_address(address: str) -> str:
    """``address`` as a store host: ``"hostname"`` becomes this host's name."""
    return socket.gethostname() if address == LOCAL_HOST_NAME else address


@dataclass(frozen=True)
class SyncPlan:
    """What every sender needs for one sync, made by the controller on rank 0 after it paused
    and flushed the servers (picklable: it travels over the trainer's process group)."""

    urls: tuple[str, ...]
    """The servers now (a restart may have moved one)."""
    tp_sizes: tuple[int, ...]
    """Each server's TP ranks in a weight-update group."""
    epoch: int
    """Groups formed under another epoch are formed again (servers restarted, a sync failed)."""
    backend: str = "gloo"
    fp8_block: int | None = None
    """Send linear weights as blockwise FP8 with their scales (engines serving FP8)."""
    flattened_buckets: bool = False
    """One uint8 broadcast per bucket (sglang's ``flattened_bucket``, vLLM's ``packed``)."""
    request_timeout_s: float = 600.0
    api_key: str | None = field(default=None, repr=False)
    protocol: str = "sglang"
    """What the servers speak: a key of ``SERVERS``."""
    packed_buffer_bytes: int = DEFAULT_PACKED_BUFFER_BYTES
    """vLLM's ``packed_buffer_size_bytes``: at least the weight bucket, so a bucket is one
    broadcast."""


class StageSender:
    def __init__(self, address: str = "127.0.0.1", stage: int = 0):
        """``address``: where this process hosts its groups' stores, as the servers reach it
        (loopback for local servers; ``"hostname"`` for this host's name). ``stage`` names
        the groups (``weight_update_group_stage1_<random>``), for the servers' logs."""
        self.address, self.stage = local_address(address), stage
        self._group: WeightGroup | None = None
        self._clients: list = []
        self._epoch: int | None = None
        self._plan: SyncPlan | None = None
        self._sole = True
        self._stale: tuple[object, list, str] | None = None
        """A group left after a failure (its routes, servers and name): the servers are asked
        to drop it at the next formation."""

    @property
    def group_name(self) -> str | None:
        return None if self._group is None else self._group.name

    def begin(self, plan: SyncPlan, sole_sender: bool = True) -> None:
        """Ready to send under ``plan``: the group is kept while the epoch and the servers are
        the same, else the old one is dropped (here and on the servers) and a new one formed;
        on vLLM engines this sender's weight-update session opens. ``sole_sender``: no other
        stage sends (vLLM engines hold one group: with several senders each releases its own
        at ``finish``)."""
        self._plan, self._sole = plan, sole_sender
        members = tuple(client.url for client in self._clients)
        same = self._group is not None and self._epoch == plan.epoch and members == plan.urls
        if not same:
            self._form_group(plan)
        SERVERS[plan.protocol].begin_stage(self._clients)

    def _form_group(self, plan: SyncPlan) -> None:
        self.abandon()
        if self._stale is not None:
            routes, clients, name = self._stale
            routes.release_stale(clients, name, RELEASE_TIMEOUT_S)
            self._stale = None
        routes = SERVERS[plan.protocol]
        self._clients = [
            routes.client(url, plan.request_timeout_s, plan.api_key) for url in plan.urls
        ]
        prefix = f"{DEFAULT_GROUP_NAME}_stage{self.stage}"
        self._group = routes.form_group(self._clients, plan.tp_sizes, self.address, plan, prefix)
        self._epoch = plan.epoch

    def send(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        """One bucket to every server: announced over HTTP while it is broadcast, returns once
        every server has loaded it; the first failure on any side is raised at once."""
        if self._group is None:
            raise RuntimeError("StageSender.send before begin: no weight-update group")
        plan = self._plan
        bucket = [(name, tensor.detach().contiguous()) for name, tensor in bucket]
        if plan.fp8_block is not None:
            bucket = list(fp8_named_tensors(bucket, plan.fp8_block))
        SERVERS[plan.protocol].send(self._clients, self._group, bucket, plan)

    def finish(self) -> None:
        """After this sender's last bucket of a sync (vLLM: its session ends; its group is
        released when other stages send too)."""
        routes = SERVERS[self._plan.protocol]
        if routes.end_stage(self._clients, self._group, self._sole, RELEASE_TIMEOUT_S):
            self._group, self._epoch = None, None

    def abandon(self) -> None:
        """Leave the group now, without waiting for any server (after a failure it may be
        broken: ``WeightGroup.abort``); the servers are asked to drop it when the next group
        is formed (by then a stuck server has been restarted)."""
        if self._group is not None:
            self._group.abort()
            self._stale = (SERVERS[self._plan.protocol], self._clients, self._group.name)
        self._group, self._epoch = None, None

    def close(self) -> None:
        """Leave the group at the end of a run together with the servers (an NCCL group is
        finalised by all its members at once); aborted if that does not finish in time."""
        group, clients = self._group, self._clients
        self._group, self._epoch, self._stale = None, None, None
        if group is None:
            return
        try:
            SERVERS[self._plan.protocol].release_with(clients, group, RELEASE_TIMEOUT_S)
        except Exception:  # a server gone or stuck: nothing to wait for at the end of a run
            group.abort()
