"""A colocated RL step (``rollout.placement=colocated``): engines and trainer on the same GPUs,
the memory handed back and forth. Per step (the planner's phases, ``planning/colocation.py``):

1. the engines generate (the trainer holds only what ``trainer_offload`` leaves it);
2. the engines release everything (``ServerRolloutEngine.release_memory``: paused, then sglang
   ``/release_memory_occupation`` with all tags, vLLM ``/sleep?level=2``) and the trainer
   reloads its state;
3. the trainer trains, then frees its gradients and moves its optimizer state to host;
4. the weight sync: engines resume their weights' memory (sglang ``{"tags": ["weights"]}``,
   vLLM ``/wake_up?tags=weights``), the buckets are sent, the version set, the engines resume
   their KV cache (and CUDA graphs), generation continues (``begin_sync``/``finish_sync``);
5. the trainer moves its weights to host ("all"); evaluation and logging generate.

The engines are released right after start-up, before the trainer builds its model (the
planner's training phase holds the engines' residue only), and a checkpoint is taken with the
engines released and the trainer reloaded, after which the weights are synced again (the
engines' weights came back empty). Rank 0 drives the engines; every rank its own memory.
"""

import json
import os
from pathlib import Path

from megatron_fork.parallel.rank0 import barrier, from_rank0
from megatron_fork.rollout.released_memory import ReleasedRecord, wake_released
from megatron_fork.rollout.server_kinds import API_KEY_VARIABLES, SERVERS
from megatron_fork.trainer.checkpoint import TRAINER_STATE_FILE
from megatron_fork.trainer.trainer_offload import TrainerOffload

RELEASED_RECORD = "released_engines.json"
"""In the output directory: what the engines at ``server_urls`` hold released (a restart
wakes them from it)."""


def is_colocated(config) -> bool:
    colocated = config.rollout.placement == "colocated"
    if colocated and config.rollout.engine != "server":
        raise ValueError("rollout.placement=colocated needs rollout.engine=server")
    return colocated


def trainer_state(latest: Path | None) -> dict:
    """The checkpoint's trainer state (step, prompt cursor), read before the model is built
    (the engines start first); a fresh run's without one."""
    if latest is None:
        return {"step": 0, "prompt_cursor": 0}
    return json.loads((Path(latest) / TRAINER_STATE_FILE).read_text())


def wake_engines_left_released(config) -> None:
    """Rank 0, before the controller waits for the engines at ``rollout.server_urls``: the
    parts a killed trainer left released, resumed where the engine cannot say so itself
    (sglang; vLLM's sleep is woken by the start-up wait, ``server_pool.wait_until_healthy``).
    Engines started here (a pool) or with the run (``rollout.engines_start_with_run``) are new:
    the record is dropped. EngineStateUnknown when a kill left one in doubt."""
    rollout = config.rollout
    record = ReleasedRecord(Path(config.output_dir) / RELEASED_RECORD)
    if not rollout.server_urls or rollout.engines_start_with_run:
        record.write({})
        return
    api_key = os.environ.get(API_KEY_VARIABLES[rollout.backend])
    client = SERVERS[rollout.backend].client
    clients = [client(url, rollout.request_timeout_s, api_key) for url in rollout.server_urls]
    wake_released(record, clients)


class Disaggregated:
    """The engines on GPUs of their own: nothing handed over, a checkpoint where it falls."""

    def __init__(self, weights):
        """``weights``: the run's ``WeightSync``."""
        self.weights = weights

    def after_rollout(self) -> None:
        pass

    def sync(self, step: int) -> None:
        self.weights.sync(step)

    def checkpoint(self, save, step: int) -> None:
        save()

    def metrics(self) -> dict:
        return {}


class Colocation(Disaggregated):
    def __init__(self, config, weights, engine, actor, reference=None):
        """``engine``: the server engine on rank 0 (None elsewhere); ``reference``: the KL
        term's frozen model (parked with the optimizer state)."""
        super().__init__(weights)
        self.engine = engine
        policy = config.rollout.trainer_offload
        self.offload = TrainerOffload(actor.model, actor.optimizer, policy, frozen=reference)

    @staticmethod
    def release_after_start(config, engine) -> None:
        """Rank 0, once the engines answer and before the trainer builds its model."""
        engine.released_record = ReleasedRecord(Path(config.output_dir) / RELEASED_RECORD)
        engine.release_memory()

    def after_rollout(self) -> None:
        """Every rank, once rank 0 has the step's samples: engines release, trainer reloads."""
        from_rank0(lambda: self.engine.release_memory())
        self.offload.restore()

    def sync(self, step: int) -> None:
        """Gradients and optimizer state off the GPU, the weights to the engines (which resume
        their memory part by part), then the trainer's weights off too ("all")."""
        self.offload.offload_for_sync()
        self.weights.sync(step)
        self.offload.offload_for_rollout()

    def checkpoint(self, save, step: int) -> None:
        """``save()`` with the engines released and the trainer's state back, then the weights
        synced again (the engines' weights come back empty) and the trainer offloaded."""
        self.after_rollout()
        save()
        barrier()
        self.sync(step)

    def metrics(self) -> dict:
        return self.offload.metrics()
