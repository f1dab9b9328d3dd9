"""The trainer and rollout servers, as they run: a Megatron Qwen3 at TP=2 on two gloo ranks,
two CPU rollout servers in their own processes (real HTTP on loopback, sglang's protocol), the
weights broadcast over a real gloo weight-update group.

- After each sync every server's log-probs of its own samples equal the trainer's log-probs of
  the same tokens (Megatron at TP=2, fp32, max abs <= 2e-5), and the weight version advances
  once per sync: servers report the old version until the last bucket is in. The first sync
  broadcasts tensor by tensor, the second one flattened buffer per bucket.
- With PP=2 the weights reach rank 0 one bucket at a time: no bucket received from the other
  stage is still alive when the next arrives, so the bucket size bounds a sync's extra memory.

Multi-rank tests assert inside each rank's worker; ``run_distributed`` re-raises failures.
"""

import weakref

from tests.support.distributed import run_distributed
from tests.support.hf_folders import write_hf_folder
from tests.support.server_parity import assert_samples_match_trainer, perturb_

BUCKET_BYTES = 4096
MAX_ABS = 2e-5
PROMPTS = [(3, 14, 15, 9), (2, 7, 1, 8, 28, 18), (5, 5), (40, 41, 42)]


def _requests(version: int):
    from megatron_fork.rollout.types import GenerationRequest, SamplingParams

    return [
        GenerationRequest(p, SamplingParams(max_new_tokens=6, seed=100 * version + i), f"r{i}")
        for i, p in enumerate(PROMPTS)
    ]


def _servers_worker(rank, world, model_dir):
    from megatron_fork.rollout.server_engine import ServerRolloutEngine
    from megatron_fork.rollout.server_pool import ServerPool, cpu_server_command
    from megatron_fork.trainer.actor import build_actor
    from megatron_fork.trainer.trainer_config import OptimizerSettings, ParallelConfig
    from megatron_fork.trainer.weight_sync import for_each_bucket_on_rank0
    from tests.support.megatron_setup import init_megatron

    init_megatron(tp=2, seed=0)
    actor = build_actor(model_dir, ParallelConfig(tensor_parallel=2, vocab_multiple=16),
                        OptimizerSettings())  # fmt: skip
    pool = engine = None
    if rank == 0:
        pool = ServerPool([cpu_server_command(model_dir, load_format="dummy")] * 2)
        engine = ServerRolloutEngine(pool.urls, pool)
    try:
        for version in (1, 2):
            perturb_(actor.model.module, seed=version)
            if engine is not None:  # sglang's two load formats: per tensor, then flattened
                engine.flattened_buckets = version == 2
            seen = []

            def consume(bucket, seen=seen):
                engine.update_weights(bucket)
                seen.append([client.weight_version() for client in engine.clients])

            for_each_bucket_on_rank0(actor.model, actor.layout, consume, BUCKET_BYTES)
            per_server = None
            if rank == 0:
                assert len(seen) > 3 and all(v == [version - 1] * 2 for v in seen), seen
                engine.update_weights([], version=version)
                assert [c.weight_version() for c in engine.clients] == [version] * 2
                per_server = [c.generate(_requests(version)) for c in engine.clients]
            assert_samples_match_trainer(
                actor.model, actor.vocab_size, per_server, version, MAX_ABS
            )
    finally:
        if pool is not None:
            pool.close()


def test_servers_match_the_trainer_after_every_sync(tmp_path):
    write_hf_folder(tmp_path / "hf")
    run_distributed(_servers_worker, 2, str(tmp_path / "hf"), timeout=240)


def _streaming_worker(rank, world, model_dir):
    from megatron_fork.trainer.actor import build_actor
    from megatron_fork.trainer.trainer_config import OptimizerSettings, ParallelConfig
    from megatron_fork.trainer.weight_sync import for_each_bucket_on_rank0
    from tests.support.megatron_setup import init_megatron

    init_megatron(pp=2, seed=0)
    actor = build_actor(model_dir, ParallelConfig(pipeline_parallel=2, vocab_multiple=16),
                        OptimizerSettings())  # fmt: skip
    received, names = [], []
    second_stage = ("model.layers.1.", "model.norm.", "lm_head.")  # 2 layers over 2 stages

    def consume(bucket):
        size = sum(t.numel() * t.element_size() for _, t in bucket)
        assert size <= BUCKET_BYTES or len(bucket) == 1
        alive = [ref for ref in received if ref() is not None]
        assert not alive, f"{len(alive)} tensors of earlier buckets are still held"
        for name, tensor in bucket:
            names.append(name)
            if name.startswith(second_stage):  # sent by the other stage's rank
                received.append(weakref.ref(tensor))

    for_each_bucket_on_rank0(actor.model, actor.layout, consume if rank == 0 else None,
                             BUCKET_BYTES)  # fmt: skip
    if rank == 0:
        assert received, "no bucket came from the second stage"
        from megatron_fork.models.hf_weights import HFWeights

        assert sorted(names) == sorted(HFWeights(model_dir))  # every HF tensor, once


def test_sync_streams_one_bucket_at_a_time_across_stages(tmp_path):
    write_hf_folder(tmp_path / "hf")
    run_distributed(_streaming_worker, 2, str(tmp_path / "hf"))
