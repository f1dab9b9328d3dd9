"""Weight sync at PP=2 to rollout servers: each pipeline stage's leader broadcasts its own stage
over a weight-update group of its own (``WeightSync`` + ``StageSender``), rank 0 only controls.

A Megatron Qwen3 at PP=2 on two gloo ranks, two CPU rollout servers in their own processes
(real HTTP on loopback, sglang's protocol), real gloo weight-update groups.

- After every sync (per tensor, then flattened) each server's log-probs of its own samples
  equal the trainer's log-probs of the same tokens (Megatron PP=2, fp32, max abs <= 2e-5), at
  the new version.
- Each rank broadcasts exactly its own stage's bytes, counted on ``WeightGroup.broadcast``
  against the Hugging Face folder's tensors (stage 0: embeddings and layer 0; stage 1: layer 1,
  the final norm and lm_head): rank 0 sends none of stage 1's.
- Stages take turns: stage 0's last bucket is in before stage 1 forms its group or announces
  its first bucket.
- A failure injected in stage 1's sender (at its second bucket) is raised on both ranks; the
  servers keep the old version and serve nothing; the next sync forms new groups (the old ones
  are gone from the servers too) and every server matches the trainer again.
- All of it with servers speaking vLLM's protocol too (``--protocol vllm``, ``VllmClient``):
  an engine holds one weight-transfer group, so each stage forms it at its turn and releases
  it after its buckets; packed buffers are cut into chunks smaller than a bucket.

Multi-rank tests assert inside each rank's worker; ``run_distributed`` re-raises failures.
"""

import time

import pytest
import torch
import torch.distributed as dist

from tests.support.distributed import run_distributed
from tests.support.hf_folders import write_hf_folder
from tests.support.server_parity import assert_samples_match_trainer, perturb_

BUCKET_BYTES = 4096
MAX_ABS = 2e-5
PROMPTS = [(3, 14, 15, 9), (2, 7, 1, 8, 28, 18)]
SECOND_STAGE = ("model.layers.1.", "model.norm.", "lm_head.")  # 2 layers over 2 stages


def _requests(version: int):
    from megatron_fork.rollout.types import GenerationRequest, SamplingParams

    return [
        GenerationRequest(p, SamplingParams(max_new_tokens=5, seed=100 * version + i), f"r{i}")
        for i, p in enumerate(PROMPTS)
    ]


def _stage_bytes(model_dir) -> list[int]:
    """fp32 bytes of each stage's Hugging Face tensors, read from the folder."""
    from megatron_fork.models.hf_weights import HFWeights

    weights, sizes = HFWeights(model_dir), [0, 0]
    for name in weights:
        numel = torch.Size(weights.shape(name)).numel()
        sizes[name.startswith(SECOND_STAGE)] += 4 * numel
    return sizes


def _instrument(log: dict) -> None:
    """Count the bytes this process broadcasts as a group's rank 0, and time each sender step."""
    from megatron_fork.rollout.stage_sender import StageSender
    from megatron_fork.rollout.weight_group import WeightGroup

    broadcast, begin, send = WeightGroup.broadcast, StageSender.begin, StageSender.send

    def counted(self, tensors):
        if self.rank == 0:
            log["bytes"] += sum(t.numel() * t.element_size() for t in tensors)
        return broadcast(self, tensors)

    def timed(step):
        def run(self, *args, **kwargs):
            start = time.monotonic()
            if log["fail_at"] is not None and step is send:
                log["fail_at"] -= 1
                if log["fail_at"] == 0:
                    raise RuntimeError("injected failure in stage 1's sender")
            step(self, *args, **kwargs)
            log["spans"].append((start, time.monotonic()))

        return run

    WeightGroup.broadcast, StageSender.begin, StageSender.send = counted, timed(begin), timed(send)


def _check_parity(actor, engine, version: int) -> None:
    """Every server's samples at ``version`` against the trainer's log-probs (last stage)."""
    per_server = None
    if engine is not None:
        assert [c.weight_version() for c in engine.clients] == [version] * 2
        per_server = [c.generate(_requests(version)) for c in engine.clients]
    assert_samples_match_trainer(actor.model, actor.vocab_size, per_server, version, MAX_ABS)


def _gathered(value):
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, value)
    return every


def _check_turns(log) -> None:
    """Stage 0's sender steps all end before stage 1's first one starts."""
    spans = _gathered(log["spans"])
    assert spans[0] and spans[1], spans
    assert max(end for _, end in spans[0]) <= min(start for start, _ in spans[1])


def _synced(weights, log, version, stage_bytes, rank) -> None:
    log["bytes"], log["spans"] = 0, []
    weights.sync(version)
    assert log["bytes"] == stage_bytes[rank], f"rank {rank} sent {log['bytes']} bytes"
    _check_turns(log)


def _pp2_worker(rank, world, model_dir, protocol):
    from megatron_fork.rollout.server_engine import ServerRolloutEngine
    from megatron_fork.rollout.server_kinds import SERVERS
    from megatron_fork.rollout.server_pool import ServerPool, cpu_server_command
    from megatron_fork.trainer.actor import build_actor
    from megatron_fork.trainer.trainer_config import OptimizerSettings, ParallelConfig
    from megatron_fork.trainer.weight_sync import WeightSync, WeightSyncError
    from tests.support.megatron_setup import init_megatron

    init_megatron(pp=2, seed=0)
    actor = build_actor(model_dir, ParallelConfig(pipeline_parallel=2, vocab_multiple=16),
                        OptimizerSettings())  # fmt: skip
    stage_bytes, log = _stage_bytes(model_dir), {"bytes": 0, "spans": [], "fail_at": None}
    _instrument(log)
    pool = engine = None
    if rank == 0:
        command = cpu_server_command(model_dir, load_format="dummy", protocol=protocol)
        pool = ServerPool([command] * 2, client=SERVERS[protocol].client)
        # vLLM's packed chunks smaller than a bucket: a bucket is several broadcasts
        engine = ServerRolloutEngine(
            pool.urls, pool, protocol=protocol, packed_buffer_bytes=BUCKET_BYTES // 3
        )
    weights = WeightSync(actor.model, actor.layout, engine, BUCKET_BYTES)
    try:
        for version in (1, 2):  # two load formats: per tensor, then flattened (packed)
            perturb_(actor.model.module, seed=version)
            if engine is not None:
                engine.flattened_buckets = version == 2
            _synced(weights, log, version, stage_bytes, rank)
            _check_parity(actor, engine, version)

        perturb_(actor.model.module, seed=3)
        old_groups = _gathered(weights.group_name)
        log["fail_at"] = 2 if rank == 1 else None
        expected = WeightSyncError if rank == 0 else RuntimeError  # rank 1 names rank 0's
        with pytest.raises(expected, match="stage 1 .*injected failure"):
            weights.sync(3)
        log["fail_at"] = None
        if engine is not None:  # nothing serves the half-synced weights
            assert [c.weight_version() for c in engine.clients] == [2, 2]
            with pytest.raises(RuntimeError, match="no rollout server serves"):
                engine.generate(_requests(3))

        _synced(weights, log, 3, stage_bytes, rank)
        _check_parity(actor, engine, 3)
        new_groups = _gathered(weights.group_name)
        if protocol == "vllm":  # one group per engine: each stage releases its own after use
            assert new_groups == old_groups == [None, None], (old_groups, new_groups)
            return
        assert not set(new_groups) & set(old_groups), (old_groups, new_groups)
        if engine is not None:  # the servers dropped the groups of before the failure
            _assert_released(engine, old_groups)
    finally:
        weights.close()
        if pool is not None:
            pool.close()


def _assert_released(engine, names) -> None:
    from megatron_fork.rollout.http_client import ServerError

    for client in engine.clients:
        for name in names:
            with pytest.raises(ServerError, match="does not exist"):
                client.call("/destroy_weights_update_group", {"group_name": name})


@pytest.mark.parametrize("protocol", ["sglang", "vllm"])
def test_each_stage_sends_its_own_weights_and_a_failed_stage_is_resynced(tmp_path, protocol):
    """On vLLM engines (one weight-transfer group each) the stages take turns forming it."""
    write_hf_folder(tmp_path / "hf")
    run_distributed(_pp2_worker, 2, str(tmp_path / "hf"), protocol, timeout=240)


def _fp8_reference(actor, model_dir):
    """On rank 0: a torch engine holding the quantise-dequantise round trip of the trainer's
    weights (gathered through rank 0, the path independent of the stage senders)."""
    from megatron_fork.rollout.fp8 import dequantize_named_tensors, fp8_named_tensors
    from megatron_fork.rollout.torch_engine import TorchRolloutEngine
    from megatron_fork.trainer.weight_sync import for_each_bucket_on_rank0
    from tests.support.tiny_qwen3 import tiny_qwen3_model

    weights = {}
    for_each_bucket_on_rank0(actor.model, actor.layout, lambda b: weights.update(b), BUCKET_BYTES)
    if dist.get_rank() != 0:
        return None
    held = dequantize_named_tensors(fp8_named_tensors(weights.items()))
    reference = tiny_qwen3_model()
    reference.load_state_dict(dict(held))
    return TorchRolloutEngine(reference)


def _fp8_worker(rank, world, model_dir):
    from megatron_fork.rollout.server_engine import ServerRolloutEngine
    from megatron_fork.rollout.server_pool import ServerPool, cpu_server_command
    from megatron_fork.trainer.actor import build_actor
    from megatron_fork.trainer.trainer_config import OptimizerSettings, ParallelConfig
    from megatron_fork.trainer.weight_sync import WeightSync
    from tests.support.megatron_setup import init_megatron

    init_megatron(pp=2, seed=0)
    actor = build_actor(model_dir, ParallelConfig(pipeline_parallel=2, vocab_multiple=16),
                        OptimizerSettings())  # fmt: skip
    log = {"bytes": 0, "spans": [], "fail_at": None}
    _instrument(log)
    pool = engine = None
    if rank == 0:
        command = cpu_server_command(model_dir, load_format="dummy", quantization="fp8")
        pool = ServerPool([command])
        engine = ServerRolloutEngine(pool.urls, pool, fp8_block=128, flattened_buckets=True)
    weights = WeightSync(actor.model, actor.layout, engine, BUCKET_BYTES)
    try:
        perturb_(actor.model.module, seed=5)
        weights.sync(1)
        assert log["bytes"] > 0  # each stage sent its own
        reference = _fp8_reference(actor, model_dir)
        if engine is not None:
            got = engine.generate(_requests(1))
            expected = reference.generate(_requests(1))
            assert [s.output_ids for s in got] == [s.output_ids for s in expected]
            gap = max(
                abs(a - b)
                for g, e in zip(got, expected, strict=True)
                for a, b in zip(g.output_logprobs, e.output_logprobs, strict=True)
            )
            assert gap <= 1e-6, gap
    finally:
        weights.close()
        if pool is not None:
            pool.close()


def test_fp8_flattened_buckets_per_stage(tmp_path):
    """An FP8 server fed stage by stage, flattened: it computes with the blockwise FP8 round
    trip of the trainer's weights."""
    write_hf_folder(tmp_path / "hf")
    run_distributed(_fp8_worker, 2, str(tmp_path / "hf"), timeout=240)


def test_a_sender_hosts_its_store_on_its_own_host_name_when_asked():
    import socket

    from megatron_fork.rollout.stage_sender import StageSender

    assert StageSender("hostname").address == socket.gethostname()
    assert StageSender().address == "127.0.0.1"  # local runs: loopback
