"""The CPU server's imitation of a colocated engine handing its memory back: tagged regions
("weights", "kv_cache", "cuda_graph") released and resumed, as sglang's torch_memory_saver
regions (``--enable-memory-saver``) and vLLM's sleep mode (``--enable-sleep-mode``) do.

- Released weights: every parameter's data is replaced by an empty tensor (the parameter
  objects stay, so the weight loader still finds them; a forward raises). Buffers (RoPE
  frequencies) stay, as sglang stashes and restores them (``_export_static_state``,
  ``scheduler_components/weight_updater.py:320-332``) and vLLM's level 2 keeps everything the
  weight update does not rewrite (``v1/worker/gpu_worker.py:320-327``).
- Resumed weights: the storage comes back with no values in it (zeros here; on a GPU whatever
  the pages hold), as sglang without ``--enable-weights-cpu-backup`` and vLLM after a level-2
  sleep: the values come back only through the following weight sync. ``keep_values``
  (vLLM's level 1: weights offloaded to host) restores them.
- The torch engine keeps no KV cache or CUDA graphs between calls: those tags are state only.
"""

import threading

import torch

WEIGHTS, KV_CACHE, CUDA_GRAPH = "weights", "kv_cache", "cuda_graph"


class Released(RuntimeError):
    """The engine's weights or cache are released: nothing can run on them."""


class ModelMemory:
    def __init__(self, model: torch.nn.Module, tags: tuple[str, ...]):
        """``tags``: the regions this engine knows (sglang: all three; vLLM: weights and KV
        cache, ``v1/executor/abstract.py:37`` SLEEP_TAGS)."""
        self.model, self.tags = model, tags
        self.released: set[str] = set()
        self._lock = threading.Lock()
        self._kept: list = []  # (parameter, shape, values kept or None) while released

    def release(self, tags, keep_values: bool = False) -> None:
        """Release ``tags`` (weights emptied; ``keep_values``: kept aside, vLLM's level 1)."""
        with self._lock:
            if WEIGHTS in tags and WEIGHTS not in self.released:
                self._release_weights(keep_values)
            self.released.update(tags)

    def resume(self, tags) -> None:
        """Resume ``tags`` (weights back: zeros, or the kept values)."""
        with self._lock:
            if WEIGHTS in tags and WEIGHTS in self.released:
                self._resume_weights()
            self.released.difference_update(tags)

    def check_resident(self, what: str) -> None:
        """Raise ``Released`` when ``what`` (generation, a weight update) would touch released
        memory: on a GPU it would read or write unmapped pages."""
        needs = {WEIGHTS, KV_CACHE} if what == "generation" else {WEIGHTS}
        released = sorted(needs & self.released)
        if released:
            raise Released(f"{what} while {', '.join(released)} released: resume them first")

    def _release_weights(self, keep_values: bool) -> None:
        self._kept = []
        for parameter in self.model.parameters():  # tied weights: one parameter object
            values = parameter.data
            self._kept.append((parameter, values.shape, values if keep_values else None))
            parameter.data = torch.empty(0, dtype=values.dtype)

    def _resume_weights(self) -> None:
        for parameter, shape, values in self._kept:
            if values is None:  # no values: the next weight sync brings them
                values = torch.zeros(shape, dtype=parameter.dtype)
            parameter.data = values
        self._kept = []
