"""One standalone evaluation: prompts -> k samples each from an engine -> the trainer's math
verifier -> ``samples.jsonl`` (per prompt, as it finishes) -> avg@k and pass@k in
``summary.json``.

Everything that decides a number is the trainer's: prompts are read by ``data.loaders`` and
encoded by ``GroupSampler.prompt_ids``, seeds are the trainer's eval seeds (``requests.py``),
responses are decoded and verified as ``GroupSampler.groups`` does (``MathRewardScorer``), and
avg@k / pass@k are computed as ``evaluate_avg_at_k`` computes them. So on the same model, file
and seed the evaluator reports what a run's own evaluation reports (tested).
"""

import hashlib
import time
from pathlib import Path

import torch

from megatron_fork.data.loaders import load_aime
from megatron_fork.data.report import DataFileError
from megatron_fork.eval.engines import build_engine, check_engine_choice
from megatron_fork.eval.model import open_model_source
from megatron_fork.eval.progress import EvalProgress
from megatron_fork.eval.requests import eval_requests, sample_seed
from megatron_fork.eval.results import ResultStore
from megatron_fork.eval.settings import EvalSettings, EvalSetupError
from megatron_fork.rewards.config import MathRewardConfig
from megatron_fork.rewards.scorer import MathRewardScorer
from megatron_fork.rewards.types import SampleStatus
from megatron_fork.rl.rollout_phase import GroupSampler
from megatron_fork.rollout.types import SamplingParams

PROMPT_FILE_HELP = (
    "an AIME/MATH-style JSONL, JSON or parquet file whose rows have a problem (problem, "
    "question, prompt or input) and an answer (answer, final_answer, ..., or a solution with "
    "\\boxed{})"
)


def load_prompt_file(settings: EvalSettings):
    """(examples, load report) of the prompt file, the first ``max_prompts`` of them."""
    path = Path(settings.prompts)
    if not path.is_file():
        raise EvalSetupError(f"prompt file {path}: not found; pass {PROMPT_FILE_HELP}")
    try:
        examples, report = load_aime(path)
    except (DataFileError, ValueError, OSError) as error:
        reason = str(error).replace(f"{path}: ", "")  # the loader's message names it too
        raise EvalSetupError(f"prompt file {path}: {reason}; pass {PROMPT_FILE_HELP}") from None
    if not examples:
        counts = report.summary().replace(f"{path}: ", "")
        raise EvalSetupError(
            f"prompt file {path}: no usable rows ({counts}); pass {PROMPT_FILE_HELP}"
        )
    return examples[: settings.max_prompts] if settings.max_prompts else examples, report


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_record(settings: EvalSettings) -> dict:
    """What the results depend on (``run.json``): a resume under anything else is refused."""
    record = settings.result_settings()
    record["model"] = str(Path(settings.model).resolve())
    record["prompts"] = str(Path(settings.prompts).resolve())
    record["prompts_sha256"] = _sha256(settings.prompts)
    return record


def sampling_of(settings: EvalSettings) -> SamplingParams:
    return SamplingParams(
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        max_new_tokens=settings.max_new_tokens,
    )


def reward_config(settings: EvalSettings) -> MathRewardConfig:
    """Correctness only (shaping does not change it): the trainer's verifier and limits."""
    return MathRewardConfig(
        overlong_shaping=False,
        max_response_tokens=settings.max_new_tokens,
        num_workers=settings.reward_workers,
        time_limit_s=settings.reward_time_limit_s,
    )


def sample_prompts(sampler: GroupSampler, batch, settings: EvalSettings) -> list[dict]:
    """The sample records of ``batch`` ((prompt index, example) pairs), prompt-major."""
    k, ids = settings.k, sampler.prompt_ids
    requests = eval_requests(batch, ids, k, sampling_of(settings), sampler.eos_id, settings.seed)
    answers = [example.answer for _, example in batch for _ in range(k)]
    samples, texts, scored = sampler.generate_scored(requests, answers)
    records = []
    for n, (sample, text, reward) in enumerate(zip(samples, texts, scored.samples, strict=True)):
        p, example = batch[n // k]
        records.append(
            {
                "prompt_index": p,
                "prompt_id": example.id,
                "sample_index": n % k,
                "seed": sample_seed(settings.seed, p, n % k),
                "response": text,
                "extracted_answer": reward.answer,
                "gold_answer": example.answer,
                "correct": reward.status is SampleStatus.CORRECT,
                "status": reward.status.value,
                "response_tokens": len(sample.output_ids),
                "finish_reason": sample.finish_reason.kind,
            }
        )
    return records


def summarize(done: dict[int, list[dict]], settings: EvalSettings) -> dict:
    """avg@k and pass@k as ``evaluate_avg_at_k`` computes them, with the sample counts."""
    rows = [done[p] for p in sorted(done)]
    table = torch.tensor([[r["correct"] for r in row] for row in rows]).float()  # [prompts, k]
    every = [r for row in rows for r in row]
    statuses = [r["status"] for r in every]
    return {
        "avg_at_k": float(table.mean()),
        "pass_at_k": float(table.amax(1).mean()),
        "k": settings.k,
        "prompts": len(rows),
        "samples": len(every),
        "correct": sum(r["correct"] for r in every),
        **{s.value: statuses.count(s.value) for s in SampleStatus if s is not SampleStatus.CORRECT},
        "truncated": sum(r["finish_reason"] == "length" for r in every),
        "mean_response_tokens": sum(r["response_tokens"] for r in every) / len(every),
    }


def evaluate(settings: EvalSettings, engine=None) -> dict:
    """Run, or resume, the evaluation ``settings`` describe; the summary (also written to
    ``out/summary.json``). Prompts already finished in ``out`` are not generated again.
    ``engine``: a ``BuiltEngine`` to use instead of building ``settings.engine`` (tests)."""
    start = time.perf_counter()
    check_engine_choice(settings)
    examples, report = load_prompt_file(settings)
    model = open_model_source(settings.model)
    record = run_record(settings)
    store = ResultStore(settings.out, record, settings.restart)
    done = store.finished([e.id for e in examples], settings.k)
    resumed = len(done)
    todo = [(p, example) for p, example in enumerate(examples) if p not in done]
    description = engine.description if engine else {"name": settings.engine, "built": False}
    if todo:
        built = engine or build_engine(settings, model)
        description = built.description
        try:
            _generate(settings, model, built.engine, todo, store, done, len(examples))
        finally:
            if engine is None:
                built.close()
    prompt_file = {
        "path": record["prompts"],
        "sha256": record["prompts_sha256"],
        "rows_read": report.rows_read,
        "rows_kept": report.rows_kept,
        "rows_skipped": report.rows_skipped,
        "skipped": dict(report.skipped),
    }
    summary = {
        **summarize(done, settings),
        "settings": {**settings.result_settings(), "model": record["model"]},
        "model": model.description(),
        "prompt_file": prompt_file,
        "engine": description,
        "resumed_prompts": resumed,
        "wall_seconds": round(time.perf_counter() - start, 3),
    }
    store.write_summary(summary)
    return summary


def _generate(settings, model, engine, todo, store: ResultStore, done: dict, total: int) -> None:
    """Generate and score ``todo`` a batch at a time, saving each batch's prompts as it ends."""
    scorer = MathRewardScorer(reward_config(settings))
    sampler = GroupSampler(engine, model.tokenizer, scorer, model.ids.eos)
    correct = sum(r["correct"] for rows in done.values() for r in rows)
    try:
        with EvalProgress(total, len(done), settings.k, settings.progress) as bar:
            for first in range(0, len(todo), settings.prompts_per_batch):
                batch = todo[first : first + settings.prompts_per_batch]
                records = sample_prompts(sampler, batch, settings)
                store.append(records)
                for n, (p, _) in enumerate(batch):
                    done[p] = records[n * settings.k : (n + 1) * settings.k]
                correct += sum(r["correct"] for r in records)
                bar.advance(len(batch), correct, len(done) * settings.k)
    finally:
        scorer.close()
