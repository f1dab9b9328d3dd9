"""The CPU backend: an explicit switch, a no-op where CUDA exists, refusing unverified
megatron-core versions, and every patch undone by ``disable_cpu_backend``."""

import pytest
import torch
from megatron.core.pipeline_parallel import schedules
from megatron.core.tensor_parallel import random as mcore_random

from megatron_fork.backends import cpu
from megatron_fork.backends.cpu import version as backend_version


@pytest.fixture
def backend():
    cpu.disable_cpu_backend()
    yield cpu
    cpu.disable_cpu_backend()


def test_enable_patches_and_disable_restores(backend):
    original_current_device = torch.cuda.current_device
    original_schedules_torch = schedules.torch
    assert backend.enable_cpu_backend() is True
    assert backend.is_cpu_backend_enabled()
    assert torch.cuda.current_device() == torch.device("cpu")
    assert schedules.torch.zeros([], device="cuda").device.type == "cpu"
    assert schedules.torch.arange is torch.arange  # everything else is the real torch
    assert backend.enable_cpu_backend() is True  # idempotent
    backend.disable_cpu_backend()
    assert not backend.is_cpu_backend_enabled()
    assert torch.cuda.current_device is original_current_device
    assert schedules.torch is original_schedules_torch
    assert mcore_random.CudaRNGStatesTracker.__name__ == "CudaRNGStatesTracker"


def test_noop_on_a_machine_with_cuda(backend, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    original = torch.cuda.current_device
    assert backend.enable_cpu_backend() is False
    assert not backend.is_cpu_backend_enabled()
    assert torch.cuda.current_device is original


def test_refuses_unverified_megatron_version(backend, monkeypatch):
    monkeypatch.setattr(backend_version, "installed_megatron_core_version", lambda: "0.15.2")
    original = torch.cuda.current_device
    with pytest.raises(backend.UnverifiedMegatronVersionError, match=r"0\.15\.2.*0\.16\.1"):
        backend.enable_cpu_backend()
    assert not backend.is_cpu_backend_enabled()
    assert torch.cuda.current_device is original  # nothing half-applied


def test_missing_megatron_is_named():
    with pytest.raises(cpu.UnverifiedMegatronVersionError, match="pip install megatron-core"):
        backend_version.check_megatron_core_version(installed="")  # empty: treated as unknown


def test_rng_tracker_forks_reproducible_cpu_streams(backend):
    backend.enable_cpu_backend()
    mcore_random.model_parallel_cuda_manual_seed(7, tp_rank=1, ep_rank=0, etp_rank=0)
    tracker = mcore_random.get_cuda_rng_tracker()
    torch.manual_seed(0)
    outside_before = torch.get_rng_state()
    with tracker.fork():
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), outside_before)  # default stream untouched
    with tracker.fork():
        second = torch.rand(4)
    assert not torch.equal(first, second)  # the forked stream advances

    mcore_random.model_parallel_cuda_manual_seed(7, tp_rank=1, ep_rank=0, etp_rank=0)
    with mcore_random.get_cuda_rng_tracker().fork():
        again = torch.rand(4)
    assert torch.equal(first, again)  # same seed and TP rank: same stream

    mcore_random.model_parallel_cuda_manual_seed(7, tp_rank=0, ep_rank=0, etp_rank=0)
    with mcore_random.get_cuda_rng_tracker().fork():
        other_rank = torch.rand(4)
    assert not torch.equal(first, other_rank)  # another TP rank: another stream


def test_cpu_causal_mask_masks_the_future(backend):
    backend.enable_cpu_backend()
    from megatron.core.fusions import fused_softmax

    mask = fused_softmax.get_default_causal_mask(3)
    expected = torch.tensor([[0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)
