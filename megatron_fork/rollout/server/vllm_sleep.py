"""vLLM's sleep mode over the CPU server (``--protocol vllm``), as ``vllm serve
--enable-sleep-mode`` with ``VLLM_SERVER_DEV_MODE=1`` answers it (vLLM 0.34.0):

- ``POST /sleep?level=0..2&mode=abort|wait|keep`` (``entrypoints/serve/dev/sleep/
  api_router.py``): the scheduler pauses in ``mode`` first (``EngineCore.sleep``,
  ``v1/engine/core.py:1090-1141``), so while asleep new requests are refused with 503
  "Generation is paused" (abort, wait) or held (keep); level 0 pauses only; level 1 offloads
  the weights to host and drops the KV cache; level 2 drops both (the weights come back
  empty: the next weight update fills them). A second sleep while the weights sleep is a
  no-op (``v1/executor/abstract.py:437-440``). Answer: ``{"status": "sleeping", "level"}``.
- ``POST /wake_up?tags=weights&tags=kv_cache`` (none: all): "scheduling" is dropped from the
  tags; a tag that is not asleep makes the executor log a warning and wake nothing
  (``abstract.py:449-459``); the scheduler resumes only once nothing sleeps
  (``core.py:1143-1169``). Answer: ``{"status": "awake"|"sleeping", "tags"}``.
- ``GET /is_sleeping``: paused or any tag asleep (``core.py:1202-1204``).
"""

from megatron_fork.rollout.server.memory import KV_CACHE, WEIGHTS
from megatron_fork.rollout.server.vllm_errors import invalid
from megatron_fork.rollout.server.vllm_generation import PAUSE_MODES, VllmGeneration

SLEEP_TAGS = (WEIGHTS, KV_CACHE)
"""``v1/executor/abstract.py:37``: what a level 1 or 2 sleep puts to sleep."""


class VllmSleep:
    def __init__(self, generation: VllmGeneration):
        self.generation = generation
        self.memory = generation.core.memory

    def sleep(self, query: dict) -> dict:
        level, mode = _level(query.get("level", "1")), query.get("mode", "abort")
        if mode not in PAUSE_MODES:
            raise invalid(
                f"1 validation error:\n  Input should be 'abort', 'wait' or 'keep' (mode={mode!r})",
                "query.mode",
            )
        self.generation.pause({"mode": mode, "clear_cache": "true" if level >= 1 else "false"})
        if level >= 1 and WEIGHTS not in self.memory.released:
            self.memory.release(SLEEP_TAGS, keep_values=level == 1)
        return {"status": "sleeping", "level": level}

    def wake_up(self, query_lists: dict) -> dict:
        asked = query_lists.get("tags") or None
        tags = None if asked is None else [t for t in asked if t != "scheduling"]
        if tags is None or tags:
            self._wake_executor(tags)
        fully_awake = not self.memory.released
        if fully_awake:
            self.generation.resume()
        return {"status": "awake" if fully_awake else "sleeping", "tags": asked}

    def _wake_executor(self, tags: list[str] | None) -> None:
        """``Executor.wake_up``: nothing when nothing sleeps or a tag is not asleep."""
        if not self.memory.released:
            return
        if tags is not None and any(tag not in self.memory.released for tag in tags):
            return  # vLLM logs "Tag %s is not in sleeping tags" and wakes nothing
        self.memory.resume(sorted(self.memory.released) if tags is None else tags)

    def is_sleeping(self) -> dict:
        paused = self.generation.is_paused()["is_paused"]
        return {"is_sleeping": paused or bool(self.memory.released)}


def _level(value: str) -> int:
    """``Query(ge=0, le=2)``: an int from 0 to 2, else a 400 validation error."""
    try:
        level = int(value)
    except ValueError:
        level = None
    if level is None or not 0 <= level <= 2:
        raise invalid(
            f"1 validation error:\n  Input should be an integer from 0 to 2 (level={value!r})",
            "query.level",
        )
    return level
