"""vLLM on GPUs (marked ``gpu``; nothing here runs on a CPU machine, and the second test needs
vLLM in its own environment, ``VLLM_PYTHON``, as the container has it).

- The trainer's half of vLLM's ``nccl_unique_id_b64`` rendezvous (``UniqueIdGroup``, torch's
  own NCCL bindings) meets a peer that does what a vLLM worker does (``pynccl.py``
  ``from_unique_id_bytes``: init at its rank from the decoded id, a one-element float32
  all-reduce, then one broadcast from rank 0 per tensor or per packed chunk), and every tensor
  arrives. Two GPUs: NCCL refuses two ranks of one communicator on one device.
- A real vLLM engine (``vllm_launch`` command and environment, dummy weights, GPU 1) joins the
  trainer's group (GPU 0), takes the weights of a tiny Qwen3 per tensor and then packed, and its
  samples' log-probs match the Hugging Face model's at the synced version.
"""

import base64
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

from tests.support.distributed import run_distributed

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"),
]


def _peer_worker(rank, world, id_file):
    import torch.cuda.nccl as nccl
    import torch.distributed as dist

    from megatron_fork.rollout.flattened_bucket import flatten_bucket, unflatten_bucket
    from megatron_fork.rollout.nccl_unique_id_group import UniqueIdGroup, new_unique_id

    torch.cuda.set_device(rank)
    sent = [torch.randn(7, 5, dtype=torch.bfloat16, device="cuda")]
    sent.append(torch.arange(33, dtype=torch.float32, device="cuda"))
    if rank == 0:
        Path(id_file).write_text(base64.b64encode(new_unique_id()).decode())
    dist.barrier()
    if rank == 0:
        uid = base64.b64decode(Path(id_file).read_text())
        group = UniqueIdGroup.join(uid, 2, "test", torch.device("cuda", 0))
        group.broadcast(sent)
        group.broadcast([flatten_bucket([("a", sent[0]), ("b", sent[1])])])
        group.destroy()
        expected = [t.cpu() for t in sent]
    else:  # what vLLM's worker does with nccl_unique_id_b64
        comm = nccl.init_rank(2, base64.b64decode(Path(id_file).read_text()), 1)
        nccl.all_reduce([torch.zeros(1, device="cuda")], comms=[comm])
        got = [torch.empty_like(t) for t in sent]
        for tensor in got:
            nccl.broadcast([tensor], root=0, comms=[comm])
        packed = torch.empty(sum(t.numel() * t.element_size() for t in sent), dtype=torch.uint8,
                             device="cuda")  # fmt: skip
        nccl.broadcast([packed], root=0, comms=[comm])
        torch.cuda.synchronize()
        names, dtypes, shapes = ["a", "b"], [t.dtype for t in sent], [t.shape for t in sent]
        unpacked = [t for _, t in unflatten_bucket(packed, names, dtypes, shapes)]
        expected = [t.cpu() for t in got], [t.cpu() for t in unpacked]
    boxes = [None, None]
    dist.all_gather_object(boxes, expected)
    for received in boxes[1]:
        for a, b in zip(boxes[0], received, strict=True):
            assert torch.equal(a, b)


def test_the_unique_id_group_meets_a_vllm_style_peer(tmp_path):
    run_distributed(_peer_worker, 2, str(tmp_path / "uid"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not shutil.which(os.environ.get("VLLM_PYTHON", "/opt/vllm/bin/python")),
    reason="needs vLLM in its own environment (VLLM_PYTHON)",
)
def test_a_real_vllm_engine_takes_the_trainers_weights(tmp_path, monkeypatch):
    from megatron_fork.rollout.server_engine import ServerRolloutEngine
    from megatron_fork.rollout.server_pool import ServerPool
    from megatron_fork.rollout.types import GenerationRequest, SamplingParams
    from megatron_fork.rollout.vllm_client import VllmClient
    from megatron_fork.rollout.vllm_launch import (
        VllmEngineConfig,
        vllm_server_command,
        vllm_server_environment,
    )
    from tests.support.hf_folders import write_hf_folder

    model = write_hf_folder(tmp_path / "hf", dtype=torch.bfloat16).cuda(0).eval()
    config = VllmEngineConfig(
        model_path=str(tmp_path / "hf"), port=_free_port(), gpu_memory_utilization=0.3,
        max_model_len=128, python=os.environ.get("VLLM_PYTHON", "/opt/vllm/bin/python"),
    )  # fmt: skip
    env = {**vllm_server_environment(os.environ, config), "CUDA_VISIBLE_DEVICES": "1"}
    for key, value in env.items():
        if key.startswith("VLLM_"):  # the pool starts the engine with this process's environment
            monkeypatch.setenv(key, value)
    torch.cuda.set_device(0)
    with ServerPool(
        [["env", "CUDA_VISIBLE_DEVICES=1", *vllm_server_command(config)]],
        startup_timeout_s=900, urls=[config.url], client=VllmClient,
    ) as pool:  # fmt: skip
        engine = ServerRolloutEngine(pool.urls, None, backend="nccl", protocol="vllm")
        requests = [
            GenerationRequest((3, 14, 15, 9), SamplingParams(max_new_tokens=8, seed=i), f"r{i}")
            for i in range(4)
        ]
        for version, packed in ((1, False), (2, True)):
            engine.flattened_buckets = packed
            engine.update_weights(model.state_dict().items(), version=version)
            for sample in engine.generate(requests):
                assert sample.weight_version == version
                ids = torch.tensor([sample.prompt_ids + sample.output_ids], device="cuda:0")
                with torch.no_grad():
                    logits = model(ids).logits[0, len(sample.prompt_ids) - 1 : -1].float()
                expected = torch.log_softmax(logits, -1).gather(
                    -1, ids[0, len(sample.prompt_ids) :, None]
                )
                got = torch.tensor(sample.output_logprobs, device="cuda:0")
                assert (got - expected[:, 0]).abs().max() < 0.05  # bf16 on both sides
        engine.close()
