"""Packed against padded training of one RL step (issue 14, point 6): the trainer's real actor
step (``train_on_slice``: old-logprob pass, ``global_step`` selection, one optimizer step per
mini-batch) of a tiny Qwen3 on CPU, over the SAME samples laid out both ways, in one run.

    .venv/bin/python tools/bench_packing.py [--json OUT] [--samples 32] [--max-response 512]
        [--threads 1] [--repeats 3] (every field of BenchSettings is an option)

Samples: prompts uniform in [--min-prompt, --max-prompt] tokens; responses long-tailed like
long chains of thought: log-normal (sigma --sigma) clipped to [1, --max-response], its location
bisected so the clipped mean is --mean-fraction (1/3) of the maximum; random token ids.

Layouts, as ``step_layout.rl_step_layout`` makes them at one process (DP=1): padded rows of
--micro-batch-size samples, each as long as the step's longest (``packing=False``), against
token-budget packed micro-batches of at most --budget positions (``packing=True``). The real
token fraction is the layout's own count (``StepLayout.real_tokens / computed_tokens``), checked
here against the tensors ``slice_mini_batches`` builds for the model.

Timing: each timed ``train_on_slice`` starts from a FRESH actor built from the same Hugging Face
folder (same weights, fresh Adam state; building is not timed). One warm-up of each layout,
then --repeats of each, alternating layouts; the figure is the minimum (all times are in the
JSON). The warm-ups' losses are reported too: the same samples from the same weights, so the
two layouts should agree to fp32 rounding.
"""

import argparse
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

GOAL_PACKED_FRACTION = 0.9
GOAL_TIME_RATIO = 0.6
PAD_ID = 0


@dataclass(frozen=True)
class BenchSettings:
    """One benchmark run (the command line's options)."""

    samples: int = 32
    """Samples in the step."""
    min_prompt: int = 16
    max_prompt: int = 64
    max_response: int = 512
    mean_fraction: float = 1 / 3
    """Mean response length over ``max_response``."""
    sigma: float = 1.0
    """Log-normal sigma of the response lengths (before clipping)."""
    mini_batches: int = 2
    micro_batch_size: int = 4
    """Rows per padded micro-batch."""
    budget: int = 1536
    """Packed: positions per micro-batch (``max_tokens_per_microbatch``): about 3x the longest
    sample, as a recipe sizes it."""
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    intermediate: int = 768
    vocab: int = 2000
    """True vocabulary; Megatron pads it to a multiple of ``ParallelConfig.vocab_multiple``."""
    repeats: int = 3
    threads: int = 1
    """torch threads. 1: on this shared 2-core machine two threads stalled on each other when
    other work ran (the same packed step took 1.1 s or 27 s); one thread gave repeats within
    10%. On a quiet machine try 2."""
    seed: int = 0


def response_lengths(settings: BenchSettings) -> list[int]:
    """Log-normal lengths clipped to [1, max_response] with mean ``mean_fraction * max``."""
    s = settings
    g = torch.Generator().manual_seed(s.seed)
    normal = torch.randn(s.samples, generator=g, dtype=torch.float64)  # [n]
    target = s.mean_fraction * s.max_response
    lo, hi = 0.0, math.log(s.max_response) + 4 * s.sigma
    for _ in range(60):  # bisect the location: the clipped mean grows with it
        mu = (lo + hi) / 2
        lengths = (mu + s.sigma * normal).exp().round().clamp(1, s.max_response)  # [n]
        lo, hi = (mu, hi) if lengths.mean() < target else (lo, mu)
    return lengths.long().tolist()


def draw_samples(settings: BenchSettings):
    """The step's samples (random ids in [1, vocab), pad id 0) and one advantage each."""
    from megatron_fork.rollout.types import FinishReason, Sample

    s = settings
    g = torch.Generator().manual_seed(s.seed + 1)
    samples = []
    for i, response in enumerate(response_lengths(s)):
        prompt = int(torch.randint(s.min_prompt, s.max_prompt + 1, (), generator=g))
        ids = torch.randint(1, s.vocab, (prompt + response,), generator=g).tolist()
        logprobs = (-torch.rand(response, generator=g, dtype=torch.float64) * 5).tolist()
        finish = FinishReason("length") if response == s.max_response else FinishReason("stop")
        samples.append(
            Sample(f"s{i}", tuple(ids[:prompt]), tuple(ids[prompt:]), tuple(logprobs), finish, 0)
        )
    advantages = torch.randn(s.samples, generator=g).sign()  # [n] +-1, as GRPO-like rewards
    return samples, advantages


def write_model(directory: Path, settings: BenchSettings) -> None:
    """A random tiny Qwen3 as a Hugging Face folder (the actor's base model)."""
    from transformers import Qwen3ForCausalLM

    from megatron_fork.rl.warm_start import TinyQwen3Size, tiny_qwen3_config

    s = settings
    size = TinyQwen3Size(
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        head_dim=s.head_dim,
        max_position_embeddings=s.max_prompt + s.max_response,
    )
    torch.manual_seed(s.seed)
    config = tiny_qwen3_config(size, s.vocab, PAD_ID, eos_id=1)
    Qwen3ForCausalLM(config).save_pretrained(directory)


def step_layouts(samples, settings: BenchSettings, multiple: int) -> dict:
    """Both layouts of the step at DP=1, as ``step_layout.rl_step_layout`` builds them."""
    from megatron_fork.rl.step_layout import packed_step_layout, padded_step_layout
    from megatron_fork.rl.train_batch import row_length
    from megatron_fork.trainer.packing import packing_layout

    s = settings
    positions = [len(x.prompt_ids) + len(x.output_ids) - 1 for x in samples]
    trainable = [True] * len(samples)
    row = row_length(max(positions) + 1, multiple)
    padded = padded_step_layout(positions, trainable, s.mini_batches, 1, s.micro_batch_size, row)
    packed = packed_step_layout(
        positions, trainable, s.mini_batches, 1, s.budget, packing_layout(1, multiple)
    )
    return {"padded": padded, "packed": packed}


def microbatch_tokens(rollout, packing: bool, multiple: int, groups) -> list[int]:
    """Positions of every micro-batch tensor the trainer builds from ``rollout``."""
    from megatron_fork.rl.train_batch import slice_mini_batches

    minis = slice_mini_batches(rollout, packing, multiple, groups, PAD_ID)
    return [mb.tokens.numel() for mini in minis if mini is not None for mb in mini]


def timed_step(model_dir, rollout, packing: bool, loss_config, groups) -> tuple[float, dict]:
    """Seconds of one ``train_on_slice`` from a fresh actor (built untimed), and its metrics."""
    from megatron_fork.rl.train_batch import train_on_slice
    from megatron_fork.trainer.actor import build_actor
    from megatron_fork.trainer.trainer_config import OptimizerSettings, ParallelConfig

    gc.collect()
    actor = build_actor(model_dir, ParallelConfig(), OptimizerSettings())
    start = time.perf_counter()
    metrics = train_on_slice(actor, loss_config, groups, rollout, packing, PAD_ID, 0)
    return time.perf_counter() - start, metrics


def _slices(samples, advantages, layouts) -> dict:
    from megatron_fork.rl.rollout_scatter import (
        RolloutToScatter,
        ScatterGroups,
        scatter_rollout,
    )

    trainable = [True] * len(samples)
    return {
        name: scatter_rollout(
            lambda layout=layout: RolloutToScatter(samples, advantages, trainable, layout),
            ScatterGroups(),
            "cpu",
        )
        for name, layout in layouts.items()
    }


def _layout_figures(name: str, layout, tokens: list[int]) -> dict:
    if sum(tokens) != layout.computed_tokens:
        raise AssertionError(
            f"{name}: the trainer builds {sum(tokens)} positions, the layout counts "
            f"{layout.computed_tokens}"
        )
    return {
        f"real_token_fraction_{name}": layout.real_tokens / layout.computed_tokens,
        f"computed_tokens_{name}": layout.computed_tokens,
        f"microbatch_tokens_{name}": tokens,
    }


def _timings(model_dir, slices, loss_config, groups, repeats: int) -> dict:
    """Warm-up of each layout, then ``repeats`` of each, alternating (drift hits both alike)."""
    times = {name: [] for name in slices}
    warm = {}
    for name, rollout in slices.items():
        warm[name] = timed_step(model_dir, rollout, name == "packed", loss_config, groups)
    for _ in range(repeats):
        for name, rollout in slices.items():
            seconds, _ = timed_step(model_dir, rollout, name == "packed", loss_config, groups)
            times[name].append(seconds)
    out = {}
    for name in slices:
        out[f"train_seconds_{name}"] = min(times[name])
        out[f"train_seconds_{name}_median"] = statistics.median(times[name])
        out[f"train_seconds_{name}_all"] = times[name]
        out[f"warmup_seconds_{name}"] = warm[name][0]
        out[f"loss_{name}"] = warm[name][1]["train/loss"]
        out[f"grad_norm_{name}"] = warm[name][1]["optim/grad_norm"]
    return out


def measure(settings: BenchSettings) -> dict:
    """Both layouts of one step's samples: token figures and train_on_slice seconds."""
    from megatron.core.utils import get_model_config

    from megatron_fork.forking import ForkingLossConfig
    from megatron_fork.rl.train_batch import row_multiple
    from megatron_fork.trainer.actor import build_actor, init_parallel, shutdown_parallel
    from megatron_fork.trainer.parallel_groups import LossGroups
    from megatron_fork.trainer.trainer_config import OptimizerSettings, ParallelConfig

    torch.set_num_threads(settings.threads)
    os.environ.pop("RANK", None)  # one gloo process of our own
    init_parallel(ParallelConfig(), settings.seed)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_packing_") as model_dir:
            write_model(Path(model_dir), settings)
            probe = build_actor(model_dir, ParallelConfig(), OptimizerSettings())
            multiple = row_multiple(get_model_config(probe.model))
            padded_vocab = probe.model.module.vocab_size
            del probe
            groups = LossGroups.from_parallel_state()
            samples, advantages = draw_samples(settings)
            layouts = step_layouts(samples, settings, multiple)
            slices = _slices(samples, advantages, layouts)
            result = {"real_tokens": layouts["padded"].real_tokens}
            for name, layout in layouts.items():
                tokens = microbatch_tokens(slices[name], name == "packed", multiple, groups)
                result.update(_layout_figures(name, layout, tokens))
            loss_config = ForkingLossConfig(vocab_size=settings.vocab)
            result.update(_timings(model_dir, slices, loss_config, groups, settings.repeats))
    finally:
        shutdown_parallel()
    responses = [len(s.output_ids) for s in samples]
    result.update(
        train_time_ratio=result["train_seconds_packed"] / result["train_seconds_padded"],
        sample_positions=[len(s.prompt_ids) + len(s.output_ids) - 1 for s in samples],
        mean_response=sum(responses) / len(responses),
        longest_response=max(responses),
        padded_vocab=padded_vocab,
        torch_threads=torch.get_num_threads(),
        settings=asdict(settings),
    )
    return result


def report(r: dict) -> str:
    s = r["settings"]
    goal_fraction = r["real_token_fraction_packed"] >= GOAL_PACKED_FRACTION
    goal_time = r["train_time_ratio"] <= GOAL_TIME_RATIO
    lines = [
        f"tiny Qwen3 (hidden {s['hidden']}, {s['layers']} layers, vocab {s['vocab']} padded to "
        f"{r['padded_vocab']}), CPU fp32, {r['torch_threads']} threads, one process",
        f"{s['samples']} samples in {s['mini_batches']} mini-batches: responses mean "
        f"{r['mean_response']:.0f}, longest {r['longest_response']} (max {s['max_response']}), "
        f"prompts {s['min_prompt']}-{s['max_prompt']}; {r['real_tokens']} real positions",
        f"{'layout':<8} {'micro-batches':>13} {'computed':>9} {'real frac':>9} "
        f"{'train s (min)':>13} {'median':>7} {'loss':>12}",
    ]
    for name, how in (("padded", f"{s['micro_batch_size']} rows"), ("packed", f"{s['budget']}")):
        lines.append(
            f"{name:<8} {len(r[f'microbatch_tokens_{name}']):>13} "
            f"{r[f'computed_tokens_{name}']:>9} {r[f'real_token_fraction_{name}']:>9.3f} "
            f"{r[f'train_seconds_{name}']:>13.2f} {r[f'train_seconds_{name}_median']:>7.2f} "
            f"{r[f'loss_{name}']:>12.6g}  ({how})"
        )
    lines.append(
        f"packed / padded train time: {r['train_time_ratio']:.2f} (goal <= {GOAL_TIME_RATIO}: "
        f"{'met' if goal_time else 'MISSED'}); packed real fraction goal >= "
        f"{GOAL_PACKED_FRACTION}: {'met' if goal_fraction else 'MISSED'}"
    )
    return "\n".join(lines)


def parse_settings(argv) -> tuple[BenchSettings, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = BenchSettings()
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=type(value), default=value)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = vars(parser.parse_args(argv))
    out = args.pop("json")
    return BenchSettings(**args), out


def main(argv=None) -> int:
    settings, out = parse_settings(argv)
    result = measure(settings)
    print(report(result), flush=True)
    if out is not None:
        out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
