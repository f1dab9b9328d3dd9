"""Patch: Megatron's model-parallel RNG tracker keeps CPU generator states.

What: ``megatron.core.tensor_parallel.random.CudaRNGStatesTracker`` is replaced by a subclass
whose ``add`` and ``fork`` seed, save and swap the CPU generator's state instead of CUDA's, and
any tracker already built is rebuilt. ``model_parallel_cuda_manual_seed`` then works unchanged.
``_get_cuda_rng_state`` / ``_set_cuda_rng_state`` (used by activation recomputation's
``CheckpointFunction`` to replay the forward's randomness) return an empty state / do nothing:
the CPU generator's state, which that function saves as well, is the only one there is.
Why: attention and dropout run under ``get_cuda_rng_tracker().fork()``, which raises
"cuda rng state model-parallel-rng is not added" on CPU. A null ``fork`` would also work, but a
real tracker keeps Megatron's contract: dropout inside TP regions differs per TP rank and is
reproducible from the seed.
Verified: megatron-core 0.16.1 with torch 2.13.0 (CPU build).
Can go: when Megatron-Core ships a device-agnostic tracker.
"""

import contextlib

import torch
from megatron.core.tensor_parallel import random as mcore_random

NAME = "rng_tracker"


class CpuRNGStatesTracker(mcore_random.CudaRNGStatesTracker):
    """Named RNG states on the CPU generator, with Megatron's tracker interface."""

    def add(self, name, seed):
        self._is_initialized = True
        if seed in self.seeds_:
            raise ValueError(f"seed {seed} already exists")
        if name in self.states_:
            raise ValueError(f"rng state {name} already exists")
        self.seeds_.add(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()

    @contextlib.contextmanager
    def fork(self, name=mcore_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise KeyError(
                f"rng state {name} is not added: call megatron.core.tensor_parallel."
                "model_parallel_cuda_manual_seed(seed) after initialize_model_parallel."
            )
        outer_state = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer_state)


def _no_cuda_rng_state(*args, **kwargs) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8)


def _ignore_cuda_rng_state(*args, **kwargs) -> None:
    pass


def apply():
    """Install the patch; return a function that undoes it."""
    original_state_functions = (mcore_random._get_cuda_rng_state, mcore_random._set_cuda_rng_state)
    mcore_random._get_cuda_rng_state = _no_cuda_rng_state
    mcore_random._set_cuda_rng_state = _ignore_cuda_rng_state
    original_class = mcore_random.CudaRNGStatesTracker
    original_tracker = mcore_random._CUDA_RNG_STATE_TRACKER
    original_initialized = mcore_random._CUDA_RNG_STATE_TRACKER_INITIALIZED

    mcore_random.CudaRNGStatesTracker = CpuRNGStatesTracker
    mcore_random.initialize_rng_tracker(force_reset=True)

    def undo():
        mcore_random._get_cuda_rng_state, mcore_random._set_cuda_rng_state = (
            original_state_functions
        )
        mcore_random.CudaRNGStatesTracker = original_class
        mcore_random._CUDA_RNG_STATE_TRACKER = original_tracker
        mcore_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = original_initialized

    return undo
