"""The RL loop: rollout -> reward -> advantages -> old-logprob pass -> mini-batch optimizer
steps with the forking-token loss -> weight sync -> eval -> log -> checkpoint, resumable.

Rank 0 is the controller (data, engine, reward, eval, log); every rank trains its part of the
model. The same function runs one CPU process (the demo) and a torchrun job of TP x PP x DP
ranks. A run whose output directory holds a checkpoint resumes from the newest complete one and
reproduces, on CPU, the metrics of an uninterrupted run exactly.
"""

import dataclasses
import json
import time
from functools import partial
from pathlib import Path

import torch.distributed as dist
from megatron.core.utils import get_model_config

from megatron_fork.atomic_files import write_text_atomically
from megatron_fork.parallel.rank0 import from_rank0, is_rank0, made_on_rank0
from megatron_fork.rl.colocation import (
    Colocation,
    Disaggregated,
    is_colocated,
    trainer_state,
    wake_engines_left_released,
)
from megatron_fork.rl.controller import Controller
from megatron_fork.rl.dynamic_sampling import DynamicSamplingExhausted
from megatron_fork.rl.progress import StepProgress
from megatron_fork.rl.rl_config import RLConfig
from megatron_fork.rl.rollout_scatter import RolloutToScatter, ScatterGroups, scatter_rollout
from megatron_fork.rl.run_lock import RunLock
from megatron_fork.rl.run_stop import record_stop, refuse_if_stopped
from megatron_fork.rl.step_layout import layout_metrics, rl_step_layout
from megatron_fork.rl.train_batch import (
    check_batch_layout,
    row_multiple,
    train_on_slice,
)
from megatron_fork.trainer.actor import (
    build_actor,
    build_reference_model,
    device,
    init_parallel,
    learning_rate,
    read_model_config,
    set_learning_rate,
    shutdown_parallel,
)
from megatron_fork.trainer.checkpoint import (
    hf_metadata_dir,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from megatron_fork.trainer.packing import attention_weight
from megatron_fork.trainer.parallel_groups import LossGroups
from megatron_fork.trainer.weight_sync import WeightSync

RUN_CONFIG_FILE = "run_config.json"
SUPPORTED_PLACEMENTS = ("disaggregated", "colocated")
"""``rollout.placement`` values the loop runs (``rl/colocation.py``; the bring-up kit's
colocation check reads this)."""


def _gather_last_stage_metrics(metrics: dict | None) -> dict | None:
    """The last pipeline stage's metrics (identical on its ranks) on rank 0."""
    if dist.get_world_size() == 1:
        return metrics
    gathered = [None] * dist.get_world_size() if is_rank0() else None
    dist.gather_object(metrics, gathered, dst=0)
    return next(m for m in gathered if m is not None) if is_rank0() else None


def _write_run_config(config: RLConfig) -> None:
    path = Path(config.output_dir) / RUN_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(
        path, json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True) + "\n"
    )


def _due(every: int, step: int, config: RLConfig) -> bool:
    """Every ``every`` steps (0: never) and at the last step."""
    return step == config.steps or (every > 0 and step % every == 0)


def run_rl(config: RLConfig) -> dict | None:
    """Train; returns the last step's metrics on rank 0 (None on other ranks). Rank 0 holds
    the output directory's lock for the run (a second job on it refuses, on every rank)."""
    owns_group = not dist.is_initialized()
    init_parallel(config.parallel, config.seed)
    lock = None
    try:
        lock = made_on_rank0(lambda: _start_lock(config.output_dir))
        return _run(config)
    finally:
        if lock is not None:
            lock.release()
        shutdown_parallel(destroy_process_group=owns_group)


def _start_lock(output_dir: str) -> RunLock:
    """Rank 0: refuse a run an earlier attempt stopped for good, then take the lock."""
    refuse_if_stopped(output_dir)
    return RunLock(output_dir).acquire()


def _run(config: RLConfig) -> dict | None:
    checkpoints = Path(config.output_dir) / "checkpoints"
    latest = latest_checkpoint(checkpoints)
    colocated = is_colocated(config)
    state = trainer_state(latest) if colocated else {"step": 0, "prompt_cursor": 0}

    def start_controller(hf_config) -> Controller:
        _write_run_config(config)
        resumed_step = state["step"] if latest is not None else -1  # -1: a fresh log
        return Controller(config, hf_config, state["prompt_cursor"], resumed_step)

    def start_colocated() -> Controller:
        """Engines first, released before the trainer builds its model (the planner's
        training phase holds only their residue)."""
        wake_engines_left_released(config)
        controller = start_controller(read_model_config(config.base_model))
        Colocation.release_after_start(config, controller.engine)
        return controller

    controller = made_on_rank0(start_colocated) if colocated else None
    # Resuming: the checkpoint overwrites the weights, so the base model's are not read.
    actor = build_actor(
        config.base_model,
        config.parallel,
        config.optimizer,
        load_weights=latest is None,
        precision=config.precision,
    )
    groups = LossGroups.from_parallel_state()
    loss_config = _checked_loss_config(config, actor, groups)
    reference = None
    if loss_config.kl_coef > 0:  # the KL term's reference: the frozen base model
        reference = build_reference_model(config.base_model, config.parallel, config.precision)
    if latest is not None:
        state = load_checkpoint(latest, actor.model, actor.optimizer)
    if not colocated:  # its errors reach every rank
        controller = made_on_rank0(lambda: start_controller(actor.hf_config))
    pad_id = from_rank0(lambda: controller.pad_id)
    engine = controller.engine if controller else None
    weights = WeightSync(
        actor.model,
        actor.layout,
        engine,
        config.rollout.weight_bucket_bytes,
        store_address=config.rollout.master_address,  # each stage leader's own host
    )
    if colocated:
        placement = Colocation(config, weights, engine, actor, reference)
    else:
        placement = Disaggregated(weights)
    last = None
    try:
        placement.sync(state["step"])
        if state["step"] == 0:
            from_rank0(
                lambda: controller.log.log(0, {**controller.evaluate(), **controller.data_metrics})
            )
        with StepProgress(config.steps, state["step"], config.progress and is_rank0()) as bar:
            for step in range(state["step"] + 1, config.steps + 1):
                models = (actor, reference, groups, loss_config)
                last = _rl_step(config, *models, controller, placement, pad_id, step)
                bar.advance(last or {})
                if _due(config.checkpoint_every, step, config):
                    save = partial(_checkpoint, config, checkpoints, step, actor, controller)
                    placement.checkpoint(save, step)
    finally:
        weights.close()
        if controller:
            controller.close()
    return last


def _checked_loss_config(config: RLConfig, actor, groups):
    """The loss config with the true vocabulary (Megatron's TP padding left out of the
    softmax), after checking that the batch splits over the layout."""
    rollout = config.rollout
    if not config.packing:  # packed micro-batches take any count of samples per rank
        check_batch_layout(
            rollout.prompts_per_step * rollout.samples_per_prompt,
            config.mini_batches_per_step,
            config.micro_batch_size,
            groups.dp_size,
        )
    if config.loss.vocab_size is not None:
        return config.loss
    return dataclasses.replace(config.loss, vocab_size=actor.vocab_size)


def _checkpoint(config: RLConfig, root: Path, step: int, actor, controller) -> None:
    cursor = controller.stream.cursor if controller else None
    state = {"prompt_cursor": cursor}
    hf_metadata = hf_metadata_dir(config.base_model)
    save_checkpoint(root, step, actor.model, actor.optimizer, state, hf_metadata=hf_metadata)
    prune_checkpoints(root, config.keep_checkpoints)


def _rl_step(
    config, actor, reference, groups, loss_config, controller, placement, pad_id, step
) -> dict | None:
    """One RL step on every rank; its metrics (logged) on rank 0. ``placement``: what happens
    around the rollout and the weight sync (``colocation.py``)."""
    start = time.perf_counter()
    batches = []  # rank 0's rollout batch (its metrics stay there)
    multiple = row_multiple(get_model_config(actor.model))
    weight = attention_weight(actor.hf_config)

    def rollout() -> RolloutToScatter:
        try:
            batch = controller.rollout(step)
        except DynamicSamplingExhausted as error:  # a requeued job would only repeat it
            record_stop(config.output_dir, error)
            raise
        samples, trainable = batch.samples, batch.trainable
        layout = rl_step_layout(config, samples, trainable, groups.dp_size, multiple, weight)
        batch.metrics.update(layout_metrics(layout))
        batches.append(batch)
        return RolloutToScatter(samples, batch.advantages.reshape(-1), trainable, layout)

    # Each DP rank gets its own samples as tensors (nothing pickled, nothing else's).
    mine = scatter_rollout(rollout, ScatterGroups.from_parallel_state(), device())
    placement.after_rollout()  # colocated: the engines' memory to the trainer
    rollout_s = time.perf_counter() - start
    lr = learning_rate(config.optimizer, step)
    set_learning_rate(actor, lr)
    train_metrics = train_on_slice(
        actor,
        loss_config,
        groups,
        mine,
        config.packing,
        pad_id,
        first_optimizer_step=(step - 1) * config.mini_batches_per_step,
        reference_model=reference,
    )
    train_metrics = _gather_last_stage_metrics(train_metrics)
    placement.sync(step)
    if train_metrics is not None:  # rank 0
        train_metrics.update({"optim/lr": lr, **placement.metrics()})
    train_s = time.perf_counter() - start - rollout_s

    def evaluate_and_log() -> None:
        metrics = {**batches[0].metrics, **train_metrics}
        if _due(config.eval.every, step, config):
            metrics.update(controller.evaluate())
        metrics["time/rollout_s"] = rollout_s
        metrics["time/train_s"] = train_s
        metrics["time/step_s"] = time.perf_counter() - start
        controller.log.log(step, metrics)
        batches[0] = metrics

    from_rank0(evaluate_and_log)
    return batches[0] if controller else None
