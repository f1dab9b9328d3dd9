"""The evaluator's numbers equal the trainer's own evaluation (``Controller.evaluate``) on the
same model, prompts and eval seed: the trainer's engine holds the weights synced from its
Megatron actor, the evaluator's engine reads the Hugging Face folder; both draw every sample
with the trainer's seed and verify it with the trainer's scorer. Over 300 prompts, so prompts
past the trainer's first eval chunk (256) are seeded by their place in the second chunk."""

import dataclasses
import json

from megatron_fork.eval.runner import evaluate
from megatron_fork.rl.rl_config import EvalConfig
from tests.eval.support import by_seed, sample_lines, tiny_settings, write_prompt_file
from tests.support.distributed import run_distributed
from tests.support.tiny_run import DATA, rl_config

PROMPTS, K = 300, 2


def _trainer_eval_worker(rank, world, base_model, prompt_file, out_dir, result_path):
    from megatron_fork.rl.controller import Controller
    from megatron_fork.trainer.actor import build_actor, init_parallel
    from megatron_fork.trainer.weight_sync import sync_weights

    config = rl_config(
        base_model,
        out_dir,
        data=dataclasses.replace(DATA, eval=str(prompt_file)),
        eval=EvalConfig(samples_per_prompt=K),
    )
    init_parallel(config.parallel, config.seed)
    actor = build_actor(config.base_model, config.parallel, config.optimizer)
    controller = Controller(config, actor.hf_config, 0, -1)
    sync_weights(actor.model, actor.layout, controller.engine, version=0)
    responses = {}
    engine, decode = controller.sampler.engine, controller.tokenizer.decode

    class Recorder:  # the trainer's responses by seed, decoded as GroupSampler decodes them
        def generate(self, requests):
            samples = engine.generate(requests)
            for request, sample in zip(requests, samples, strict=True):
                text = decode(list(sample.output_ids), skip_special_tokens=True)
                responses[request.sampling.seed] = text
            return samples

    controller.sampler.engine = Recorder()
    metrics = controller.evaluate()
    controller.close()
    result = {"metrics": metrics, "responses": responses, "seed": config.eval.seed}
    result_path.write_text(json.dumps(result))


def test_evaluator_equals_the_trainers_evaluation(base_model, tmp_path):
    prompt_file = write_prompt_file(tmp_path / "prompts.jsonl", PROMPTS)
    result_path = tmp_path / "trainer.json"
    run_distributed(_trainer_eval_worker, 1, base_model, prompt_file, tmp_path / "run", result_path)
    trainer = json.loads(result_path.read_text())
    settings = tiny_settings(base_model, prompt_file, tmp_path / "eval", k=K, prompts_per_batch=40)
    assert settings.seed == trainer["seed"] and settings.top_p == 0.7  # the defaults agree
    summary = evaluate(settings)
    assert summary["prompts"] == PROMPTS and summary["samples"] == PROMPTS * K
    assert summary["avg_at_k"] == trainer["metrics"]["eval/avg_at_k"]
    assert summary["pass_at_k"] == trainer["metrics"]["eval/pass_at_k"]
    assert 0.1 < summary["avg_at_k"] < 0.9  # a model that is sometimes right: a real check
    ours = by_seed(sample_lines(tmp_path / "eval"))
    theirs = {int(seed): text for seed, text in trainer["responses"].items()}
    assert ours == theirs  # every sample: same seed, same response
