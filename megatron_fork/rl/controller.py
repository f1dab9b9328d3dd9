"""Rank 0's side of an RL run: the prompt sets, the rollout engine, the reward, evaluation and
the metrics log. The other ranks only train; they receive each step's samples from here.
"""

import os

import torch
from transformers import Qwen3ForCausalLM

from megatron_fork.data.prompt_sets import load_prompt_sets
from megatron_fork.data.prompt_stream import PromptStream
from megatron_fork.data.tokenizer import load_tokenizer, special_token_ids
from megatron_fork.rewards.scorer import MathRewardScorer
from megatron_fork.rl.metrics_log import MetricsLog
from megatron_fork.rl.rl_config import RLConfig
from megatron_fork.rl.rollout_phase import (
    GroupSampler,
    RolloutBatch,
    collect_rollout_batch,
    evaluate_avg_at_k,
)
from megatron_fork.rollout.fp8 import BLOCK as FP8_BLOCK
from megatron_fork.rollout.server_engine import ServerRolloutEngine
from megatron_fork.rollout.server_kinds import API_KEY_VARIABLES, SERVERS
from megatron_fork.rollout.server_pool import (
    ServerPool,
    cpu_server_command,
    wait_until_healthy,
)
from megatron_fork.rollout.torch_engine import TorchRolloutEngine
from megatron_fork.rollout.types import SamplingParams
from megatron_fork.trainer.checkpoint import hf_metadata_dir


def rollout_sampling(config: RLConfig) -> SamplingParams:
    r = config.rollout
    return SamplingParams(
        temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens
    )


def eval_sampling(config: RLConfig) -> SamplingParams:
    return SamplingParams(
        temperature=config.eval.temperature,
        top_p=config.eval.top_p,
        max_new_tokens=config.rollout.max_new_tokens,
    )


def data_metrics(reports) -> dict:
    """Rows read/kept/skipped of every data file, for the log."""
    metrics = {}
    for i, report in enumerate(reports):
        metrics[f"data/{i}/rows_read"] = report.rows_read
        metrics[f"data/{i}/rows_kept"] = report.rows_kept
        metrics[f"data/{i}/rows_skipped"] = report.rows_skipped
    return metrics


class Controller:
    def __init__(self, config: RLConfig, hf_config, prompt_cursor: int, resume_step: int):
        self.config = config
        self.tokenizer = load_tokenizer(hf_metadata_dir(config.base_model))
        ids = special_token_ids(self.tokenizer)
        self.pad_id, self.eos_id = ids.pad, ids.eos
        sets = load_prompt_sets(config.data)
        for report in sets.reports:
            print(report.summary(), flush=True)
        self.data_metrics = data_metrics(sets.reports)
        self.stream = PromptStream(sets.train, config.seed, prompt_cursor)
        limit = config.eval.max_prompts
        self.eval_set = sets.eval[:limit] if limit else sets.eval
        self.engine = rollout_engine(config, hf_config, self.pad_id)
        self.scorer = MathRewardScorer(config.reward)
        self.sampler = GroupSampler(self.engine, self.tokenizer, self.scorer, self.eos_id)
        self.log = MetricsLog(config.output_dir, config.tensorboard, resume_step)

    def rollout(self, step: int) -> RolloutBatch:
        c = self.config
        batch = collect_rollout_batch(
            self.sampler,
            self.stream,
            step,
            c.seed,
            c.rollout.prompts_per_step,
            c.rollout.prompts_per_round,
            c.rollout.samples_per_prompt,
            rollout_sampling(c),
            c.dynamic_sampling,
            c.advantage,
        )
        counters = getattr(self.engine, "counters", {})  # a server engine's fault counters
        batch.metrics.update({f"rollout/{name}": float(n) for name, n in counters.items()})
        return batch

    def evaluate(self, on_progress=None) -> dict:
        return evaluate_avg_at_k(
            self.sampler,
            self.eval_set,
            self.config.eval.samples_per_prompt,
            eval_sampling(self.config),
            self.config.eval.seed,
            on_progress=on_progress,
        )

    def close(self) -> None:
        self.scorer.close()
        self.log.close()
        if hasattr(self.engine, "close"):
            self.engine.close()


def rollout_engine(config: RLConfig, hf_config, pad_id: int):
    """The run's engine, at weight version 0 with placeholder weights (the first sync fills
    them): in this process, or behind sglang's or vLLM's protocol (``rollout.backend``) in
    server processes."""
    rollout = config.rollout
    if rollout.engine == "torch":
        model = Qwen3ForCausalLM(hf_config).to(torch.float32)
        return TorchRolloutEngine(model, rollout.engine_batch_size, pad_id, config.seed)
    pool = None
    urls = list(rollout.server_urls)
    api_key = os.environ.get(API_KEY_VARIABLES[rollout.backend])
    client = SERVERS[rollout.backend].client
    if urls:
        wait_until_healthy(urls, rollout.engine_startup_timeout_s, api_key, client=client)
    else:
        options = dict(
            protocol=rollout.backend,
            load_format="dummy",
            max_batch_size=rollout.engine_batch_size,
            pad_token_id=pad_id,
            random_seed=config.seed,
        )
        if rollout.fp8:
            options["quantization"] = "fp8"
        command = cpu_server_command(str(hf_metadata_dir(config.base_model)), **options)
        pool = ServerPool([command] * rollout.servers, client=client)
        urls = pool.urls
    return ServerRolloutEngine(
        urls,
        pool,
        rollout.request_timeout_s,
        master_address=rollout.master_address,
        backend=rollout.weight_backend,
        fp8_block=FP8_BLOCK if rollout.fp8 else None,
        tp_sizes=[rollout.server_tp_size if rollout.server_urls else 1] * len(urls),
        api_key=api_key,
        protocol=rollout.backend,
        packed_buffer_bytes=rollout.weight_bucket_bytes,
    )
