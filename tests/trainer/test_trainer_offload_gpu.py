"""TrainerOffload on one CUDA GPU, as the colocated loop drives it (``rl/colocation.py``:
``sync`` = offload_for_sync, the weight sync, offload_for_rollout; ``after_rollout`` = restore),
two cycles (the second reuses Megatron's pinned host copy of the param buffer). A tiny Qwen3 in
bf16 with fp32 main params and Adam, built by ``build_actor`` as the recipes run it (FP8 aside),
checked against its own snapshot and against a twin actor that was never offloaded:

- the weights the sync reads stay on the GPU, unchanged, while the optimizer state is on host;
- ``torch.cuda.memory_allocated()`` drops by at least the parameter count's bytes (fp32 grads 4,
  main params 4, Adam's two moments 8, the frozen reference's bf16 2 at the sync already; with
  "all" the bf16 weights 2 after it) and at most by the storages that should go, each rounded
  up to the allocator's 512-byte block
  (c10 ``CUDACachingAllocator`` ``round_size``; below ``kSmallSize`` = 1 MiB a block is split to
  exactly that size, so no other slack: asserted);
- after ``restore`` the weights, main params and Adam states are equal (``torch.equal``) to the
  snapshot, the gradients zero; the next step equals the twin's bit for bit (gradients written
  straight into ``main_grad`` from a CPU generator: no backward, no atomics to reorder sums).

Megatron-Core 0.16.1 (``.venv/.../megatron/core``), read for this test:
- ``distributed/distributed_data_parallel.py:575-594`` offload_grad_buffers (grad storages
  resized to 0), ``:596-611`` restore_grad_buffers (resized back, zeroed), both over
  ``self.buffers + self.expert_parallel_buffers``;
- ``distributed/param_and_grad_buffer.py:612`` ``buffer.params``; ``:751`` ``param_data = None``,
  allocated only with the distributed optimizer (``:796-801``): plain DDP has no param buffer,
  so TrainerOffload parks each parameter (``_park``), asserted below; ``:964-977``
  offload_to_cpu (pinned host copy, reused from the second call with a non-blocking copy),
  ``:979-994`` reload_from_cpu;
- ``optimizer/optimizer.py:344-362`` offload_to_cpu (``p.data = p.data.cpu()`` for the inner
  optimizer's params, state tensors to host), ``:364-380`` restore_from_cpu (every CPU state
  tensor to the GPU: torch AdamW's CPU ``step`` too, which only changes where ``.item()`` reads
  it); ``ChainedOptimizer`` ``:1414-1422``; no override in ``distrib_optimizer.py``;
- what those params are: ``distrib_optimizer.py:399,411,441-444,607`` (fp32 shards, the same
  objects as ``model_param.main_param``) and ``optimizer.py:674-683`` (Float16Optimizer's fp32
  copies); ``optimizer/__init__.py:447-461,689`` (Distributed/Float16 in a ChainedOptimizer).

Marked ``gpu``: skipped, with the reason printed, where no CUDA device exists. Not yet run on a
GPU (written where none was lent).
"""

import gc

import pytest
import torch

from tests.support.distributed import run_distributed
from tests.support.hf_folders import write_hf_folder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

BLOCK = 512  # CUDACachingAllocator kMinBlockSize: every block's size is a multiple of it
SMALL_POOL = 1 << 20  # kSmallSize: a request below it gets a block of exactly its rounded size
STATE_BYTES = 4 + 4 + 8  # per parameter: fp32 grad, fp32 main param, Adam's exp_avg + exp_avg_sq
WEIGHT_BYTES = 2  # per parameter: bf16


def _buffers(actor):
    return actor.model.buffers + actor.model.expert_parallel_buffers


def _main_params(actor) -> list:
    """The inner optimizers' params: the fp32 main params (bf16 model, both optimizers)."""
    parts = actor.optimizer.chained_optimizers
    return [p for part in parts for g in part.optimizer.param_groups for p in g["params"]]


def _moments(actor) -> list:
    """(key, tensor) of every tensor in the inner optimizers' state, in param order."""
    found = []
    for part in actor.optimizer.chained_optimizers:
        for group in part.optimizer.param_groups:
            for param in group["params"]:
                state = part.optimizer.state[param]
                found += [(k, v) for k, v in sorted(state.items()) if torch.is_tensor(v)]
    return found


def _weights(actor) -> list:
    """The tensors holding the bf16 weights: the param buffer, else each parameter."""
    found = []
    for buffer in _buffers(actor):
        found += [buffer.param_data] if buffer.param_data is not None else list(buffer.params)
    return found


def _frozen(reference) -> list:
    return [] if reference is None else list(reference.parameters())


def _snapshot(actor, reference=None) -> dict:
    out = {f"w/{n}": p.detach().cpu().clone() for n, p in actor.model.module.named_parameters()}
    out.update({f"main/{i}": p.detach().cpu().clone() for i, p in enumerate(_main_params(actor))})
    for i, (key, value) in enumerate(_moments(actor)):
        out[f"adam/{i}/{key}"] = value.detach().cpu().clone()
    if reference is not None:
        out.update({f"ref/{n}": p.detach().cpu().clone() for n, p in reference.named_parameters()})
    return out


def _assert_same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


def _step(actor, seed: int) -> None:
    """One optimizer step on fixed gradients (fp32 ``main_grad``, as DDP leaves them)."""
    from megatron_fork.trainer.actor import optimizer_step, zero_grads

    zero_grads(actor)
    generator = torch.Generator().manual_seed(seed)
    for param in actor.model.module.parameters():
        param.main_grad.copy_(torch.randn(param.shape, generator=generator))
    assert optimizer_step(actor)["optim/skipped"] == 0.0


def _bounds(tensors: list, lower: int) -> tuple[int, int]:
    """(lower, upper) bytes freed: ``lower`` from the parameter count; upper: the distinct
    GPU storages of ``tensors``, each rounded up to the allocator's block."""
    sizes = {}
    for tensor in tensors:
        if tensor.is_cuda and tensor.untyped_storage().nbytes():
            sizes[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    assert max(sizes.values()) < SMALL_POOL, "the rounding slack holds for small blocks only"
    return lower, sum(-(-size // BLOCK) * BLOCK for size in sizes.values())


def _expected_drops(actor, reference, policy: str) -> tuple:
    """Bounds after offload_for_sync (state) and after offload_for_rollout (+ weights)."""
    n = sum(p.numel() for p in actor.model.module.parameters())
    n_ref = 0 if reference is None else sum(p.numel() for p in reference.parameters())
    state = [b.grad_data for b in _buffers(actor)] + _main_params(actor)
    state += [value for _, value in _moments(actor)] + _frozen(reference)
    after_sync = _bounds(state, STATE_BYTES * n + WEIGHT_BYTES * n_ref)
    if policy != "all":
        return after_sync, after_sync
    weights = _bounds(state + _weights(actor), after_sync[0])
    return after_sync, (weights[0] + WEIGHT_BYTES * n, weights[1])


def _allocated() -> int:
    gc.collect()  # no GPU tensor freed by a late collection inside a measurement
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def _offload_as_the_loop_does(offload, actor, reference, before: dict) -> tuple[int, int]:
    """``Colocation.sync``: the bytes freed after offload_for_sync and after the rollout's."""
    start = _allocated()
    offload.offload_for_sync()
    assert not any(p.is_cuda for p in _main_params(actor)), "main params left on the GPU"
    assert all(b.grad_data.untyped_storage().nbytes() == 0 for b in _buffers(actor))
    assert all(p.untyped_storage().nbytes() == 0 for p in _frozen(reference))
    unfrozen = {name: value for name, value in before.items() if not name.startswith("ref/")}
    _assert_same(_snapshot(actor), unfrozen)  # what the weight sync reads
    after_sync = start - _allocated()
    offload.offload_for_rollout()
    return after_sync, start - _allocated()


def _cycle(offload, actor, reference, policy: str) -> None:
    before = _snapshot(actor, reference)
    assert any(name.startswith("adam/") for name in before), "no Adam state to move"
    bounds = _expected_drops(actor, reference, policy)
    drops = _offload_as_the_loop_does(offload, actor, reference, before)
    for (lower, upper), drop in zip(bounds, drops, strict=True):
        assert lower <= drop <= upper, (lower, drop, upper)
    parked = [t.untyped_storage().nbytes() == 0 for t in _weights(actor)]
    assert all(parked) if policy == "all" else not any(parked)
    offload.restore()
    _assert_same(_snapshot(actor, reference), before)
    assert all(torch.count_nonzero(b.grad_data) == 0 for b in _buffers(actor))


def _offload_worker(rank, world, model_dir, policy, distributed_optimizer, with_reference):
    import os

    import torch.distributed as dist

    from megatron_fork.trainer.actor import build_actor, build_reference_model, init_parallel
    from megatron_fork.trainer.trainer_config import (
        OptimizerSettings,
        ParallelConfig,
        PrecisionConfig,
    )
    from megatron_fork.trainer.trainer_offload import TrainerOffload

    dist.destroy_process_group()  # the helper's gloo group: start as the trainer does (NCCL)
    os.environ.pop("RANK", None)
    parallel = ParallelConfig(distributed_optimizer=distributed_optimizer)
    precision = PrecisionConfig(params="bf16")
    init_parallel(parallel, seed=0)
    optim = OptimizerSettings(lr=1e-2, weight_decay=0.1)  # steps that move bf16 weights
    actor = build_actor(model_dir, parallel, optim, precision=precision)
    twin = build_actor(model_dir, parallel, optim, precision=precision)  # never offloaded
    reference = build_reference_model(model_dir, parallel, precision) if with_reference else None
    kind = "DistributedOptimizer" if distributed_optimizer else "Float16OptimizerWithFloat16Params"
    assert [type(p).__name__ for p in actor.optimizer.chained_optimizers] == [kind]
    assert all((b.param_data is not None) == distributed_optimizer for b in _buffers(actor))
    assert all(p.dtype == torch.bfloat16 for p in actor.model.module.parameters())
    for one in (actor, twin):
        _step(one, seed=1)  # Adam's moments exist from the first step on
    _assert_same(_snapshot(actor), _snapshot(twin))  # the same step, the same state: a baseline
    offload = TrainerOffload(actor.model, actor.optimizer, policy, on_gpu=True, frozen=reference)
    for _ in range(2):
        _cycle(offload, actor, reference, policy)
    assert offload.counts["restore"] == 2 and offload.metrics()["colocated/trainer_offload_on_gpu"]
    for one in (actor, twin):
        _step(one, seed=2)
    _assert_same(_snapshot(actor), _snapshot(twin))


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("offload") / "model"
    write_hf_folder(directory)
    return directory


@pytest.mark.parametrize(
    "policy, distributed_optimizer, with_reference",
    [
        pytest.param("all", True, False, id="all"),
        pytest.param("optimizer", True, False, id="optimizer"),
        pytest.param("optimizer", True, True, id="optimizer-with-frozen-reference"),
        pytest.param("all", False, True, id="all-plain-ddp-with-frozen-reference"),
        pytest.param("all", False, False, id="all-plain-ddp-parks-each-param"),
    ],
)
def test_offload_frees_the_memory_and_restores_exactly(
    hf_model, policy, distributed_optimizer, with_reference
):
    run_distributed(
        _offload_worker, 1, str(hf_model), policy, distributed_optimizer, with_reference
    )
