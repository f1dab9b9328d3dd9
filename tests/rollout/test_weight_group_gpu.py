"""A weight broadcast over NCCL that a server never joins: the sender gets a TimeoutError within
the deadline, its own CUDA stream is never made to wait, and the group is aborted without its
peer. Needs two CUDA GPUs (NCCL refuses two ranks on one device); marked ``gpu``."""

import time
from datetime import timedelta

import pytest
import torch

from tests.support.distributed import run_distributed

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"),
]
TIMEOUT = timedelta(seconds=20)


def _worker(rank, world, port_file):
    from pathlib import Path

    import torch.distributed as dist
    from torch.distributed import TCPStore

    from megatron_fork.rollout.weight_group import DEADLINE_SHARE, join_weight_group, master_store

    torch.cuda.set_device(rank)
    if rank == 0:
        store = master_store("127.0.0.1", 2, timeout=TIMEOUT)
        Path(port_file).write_text(str(store.port))
    dist.barrier()
    if rank == 1:
        store = TCPStore("127.0.0.1", int(Path(port_file).read_text()), 2, False, timeout=TIMEOUT)
    group = join_weight_group(store, rank, 2, "weights_gpu_test", "nccl", TIMEOUT)
    tensor = torch.full((1024,), float(rank), device="cuda")
    group.broadcast([tensor])  # both join: the communicator is up and the value arrives
    assert float(tensor[0]) == 0.0
    if rank == 0:  # the server side never joins this one
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            group.broadcast([tensor])
        assert time.monotonic() - start < TIMEOUT.total_seconds()
        assert DEADLINE_SHARE < 1
        after = torch.ones(64, 64, device="cuda") @ torch.ones(64, 64, device="cuda")
        torch.cuda.current_stream().synchronize()  # the rank's own stream is not held
        assert float(after[0, 0]) == 64.0
    group.abort()
    dist.barrier()


def test_a_broadcast_nobody_joins_times_out_without_holding_the_stream(tmp_path):
    run_distributed(_worker, 2, str(tmp_path / "port"))
