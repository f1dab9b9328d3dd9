"""The actor: process groups, a Megatron Qwen3 loaded from a Hugging Face directory, Megatron
DDP and Megatron's optimizer. Shared by the RL loop and the supervised warm start.

``init_parallel`` joins torchrun's process group when launched by it (``RANK`` in the
environment), else makes a one-process gloo group, so the same entry point runs on a laptop
and under torchrun/Slurm. On a machine without CUDA it enables the CPU backend.
"""

import json
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.distributed import DistributedDataParallel, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset
from transformers import Qwen3Config

from megatron_fork.models.fusions import GPU_FUSION_FIELDS
from megatron_fork.models.hf_mapping import Qwen3Layout, load_hf_weights_
from megatron_fork.models.hf_weights import HFWeights
from megatron_fork.models.qwen3 import build_qwen3_model
from megatron_fork.trainer.checkpoint import (
    hf_metadata_dir,
    is_megatron_checkpoint,
    load_model_weights,
)
from megatron_fork.trainer.megatron_options import (
    ddp_config,
    needs_gpu,
    optimizer_precision,
    params_dtype,
    transformer_options,
)
from megatron_fork.trainer.trainer_config import OptimizerSettings, ParallelConfig, PrecisionConfig

CPU_PRECISION = PrecisionConfig()
"""fp32, no FP8: the default everywhere a caller does not choose (conversion, analysis, tests)."""


def init_parallel(parallel: ParallelConfig, seed: int) -> None:
    """Process group (torchrun's, or one gloo process), this rank's GPU, Megatron parallel
    state and seeds."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        timeout = timedelta(minutes=parallel.collective_timeout_minutes)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if "RANK" in os.environ:
            dist.init_process_group(backend, timeout=timeout)
        else:  # one process, no rendezvous: NCCL on a GPU too (gloo has no CUDA collectives)
            store = dist.HashStore()
            dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
    if not torch.cuda.is_available():
        from megatron_fork.backends.cpu import enable_cpu_backend

        enable_cpu_backend()
    world = dist.get_world_size()
    model_parallel = parallel.model_parallel_size
    if world % model_parallel:
        raise ValueError(
            f"{world} processes cannot hold TP={parallel.tensor_parallel} x "
            f"PP={parallel.pipeline_parallel} x CP={parallel.context_parallel}: launch a "
            f"multiple of {model_parallel} processes"
        )
    ps.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_parallel,
        pipeline_model_parallel_size=parallel.pipeline_parallel,
        context_parallel_size=parallel.context_parallel,
        # Megatron's TP/PP/DP/CP groups wait as long as the world group (default: 30 min).
        distributed_timeout_minutes=math.ceil(parallel.collective_timeout_minutes),
    )
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def shutdown_parallel(destroy_process_group: bool = True) -> None:
    """Undo ``init_parallel`` (the process group only when this run created it)."""
    ps.destroy_model_parallel()
    if destroy_process_group and dist.is_initialized():
        dist.destroy_process_group()


def read_hf_config(model_dir: str | Path) -> Qwen3Config:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model directory (no config.json)")
    config = Qwen3Config.from_dict(json.loads(path.read_text()))
    if config.model_type != "qwen3":
        raise ValueError(f"{path}: model_type is {config.model_type!r}, this recipe maps qwen3")
    return config


def read_model_config(model_source: str | Path) -> Qwen3Config:
    """The Hugging Face config of a model folder or of a Megatron checkpoint (its ``hf/``)."""
    return read_hf_config(hf_metadata_dir(model_source))


@dataclass
class Actor:
    """This rank's model (DDP-wrapped), optimizer and the layout the mapping needs."""

    model: DistributedDataParallel
    optimizer: object
    hf_config: Qwen3Config
    layout: Qwen3Layout
    weight_decay: float = 0.0
    """Decoupled weight decay of the weights; each parameter group gets it times its Megatron
    ``wd_mult`` (0 for norms and biases), as Megatron's learning-rate scheduler applies it."""

    @property
    def vocab_size(self) -> int:
        """The true (unpadded) vocabulary: the loss and sampling ignore TP padding."""
        return self.hf_config.vocab_size


def device() -> torch.device:
    """Where this rank's model and batches live: its GPU, else the CPU."""
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else (torch.device("cpu"))
    )


def megatron_model(
    hf_config,
    parallel: ParallelConfig,
    precision: PrecisionConfig = CPU_PRECISION,
    initialize: bool = True,
    dtype: torch.dtype | None = None,
):
    """This rank's part of the Megatron Qwen3, on the GPU when there is one; randomly
    initialised, or (``initialize=False``) left for the caller to load every weight.
    ``dtype`` overrides the weights' dtype alone (conversion keeps a checkpoint's own)."""
    on_cpu = not torch.cuda.is_available()
    gpu_only = needs_gpu(parallel, precision)
    if on_cpu and gpu_only:
        raise ValueError(
            f"{'; '.join(gpu_only)} needs CUDA and Transformer Engine; on this machine use "
            "the defaults of those settings"
        )
    model = build_qwen3_model(
        hf_config,
        parallel.tensor_parallel,
        parallel.pipeline_parallel,
        vocab_multiple=parallel.vocab_multiple,
        context_parallel_size=parallel.context_parallel,
        params_dtype=dtype or params_dtype(precision),
        on_cpu=on_cpu,
        initialize=initialize,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        transformer_options=transformer_options(parallel, precision),
    )
    if on_cpu:
        return model
    if dist.get_rank() == 0:  # which kernels this image gave (Apex's wgrad kernel may be absent)
        fused = [name for name in GPU_FUSION_FIELDS if getattr(model.config, name)]
        print(f"Megatron fusions on: {', '.join(fused) or 'none'}", flush=True)
    return model.cuda()


def _load_base_weights(model, source, layout: Qwen3Layout, parallel: ParallelConfig) -> None:
    """From a Megatron checkpoint (any layout) or a Hugging Face folder (tensor by tensor)."""
    if is_megatron_checkpoint(source):
        load_model_weights(source, model)
        return
    load_hf_weights_(
        model,
        HFWeights(source),
        layout,
        ps.get_tensor_model_parallel_rank(),
        parallel.tensor_parallel,
        get_transformer_layer_offset(model.config),
    )


def build_reference_model(
    model_dir: str | Path, parallel: ParallelConfig, precision: PrecisionConfig = CPU_PRECISION
):
    """A frozen copy of the base model (no DDP, no optimizer) for the KL term's reference
    log-probs; built only when ``loss.kl_coef > 0``."""
    hf_config = read_model_config(model_dir)
    model = megatron_model(hf_config, parallel, precision, initialize=False)
    _load_base_weights(model, model_dir, Qwen3Layout.from_hf_config(hf_config), parallel)
    return model.eval().requires_grad_(False)


def build_actor(
    model_dir: str | Path,
    parallel: ParallelConfig,
    optim: OptimizerSettings,
    load_weights: bool = True,
    precision: PrecisionConfig = CPU_PRECISION,
) -> Actor:
    """Megatron Qwen3 for ``model_dir``'s config, with its weights, in Megatron DDP, plus
    Megatron's Adam. ``model_dir`` is a Hugging Face folder or a Megatron checkpoint (e.g. one
    converted by ``checkpoints_convert hf-to-mcore``, at any layout). ``load_weights=False``
    keeps the random initialisation (the warm start, or a run about to load a checkpoint)."""
    hf_config = read_model_config(model_dir)
    model = megatron_model(hf_config, parallel, precision, initialize=not load_weights)
    layout = Qwen3Layout.from_hf_config(hf_config)
    if load_weights:
        _load_base_weights(model, model_dir, layout, parallel)
    model.config.finalize_model_grads_func = finalize_model_grads
    ddp = DistributedDataParallel(model.config, ddp_config(parallel, precision), model)
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=optim.lr,
            weight_decay=optim.weight_decay,
            clip_grad=optim.clip_grad,
            adam_beta1=optim.adam_beta1,
            adam_beta2=optim.adam_beta2,
            adam_eps=optim.adam_eps,
            **optimizer_precision(parallel, precision),
        ),
        [ddp],
    )
    actor = Actor(ddp, optimizer, hf_config, layout, weight_decay=optim.weight_decay)
    set_learning_rate(actor, optim.lr)  # the decay of each group, from the first step on
    return actor


def learning_rate(optim: OptimizerSettings, step: int) -> float:
    """The rate of RL step ``step`` (1-based): linear warm-up, then ``optim.lr``."""
    if optim.warmup_steps == 0:
        return optim.lr
    return optim.lr * min(1.0, step / optim.warmup_steps)


def set_learning_rate(actor: Actor, lr: float) -> None:
    """Every parameter group of Megatron's (chained) optimizer, as its own scheduler does
    (``OptimizerParamScheduler.step``): the rate, and the weight decay times the group's
    ``wd_mult``. Megatron builds the groups without a ``weight_decay`` key, so without this the
    optimizer's default decay would reach norms and biases too (``wd_mult`` 0)."""
    for group in actor.optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = actor.weight_decay * group.get("wd_mult", 1.0)


def optimizer_step(actor: Actor) -> dict:
    """One optimizer step after a forward/backward; the grad norm and whether it applied."""
    applied, grad_norm, _ = actor.optimizer.step()
    return {"optim/grad_norm": float(grad_norm or 0.0), "optim/skipped": float(not applied)}


def zero_grads(actor: Actor) -> None:
    actor.model.zero_grad_buffer()
    actor.optimizer.zero_grad()
