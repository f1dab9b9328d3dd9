"""A checkpoint the RL trainer wrote (TP=2, model + optimizer) converts to Hugging Face, and
the HF model gives the trainer's log-probs: the trainer's own old-logprob pass at TP=2 on the
checkpoint vs ``log_softmax`` of ``AutoModelForCausalLM`` on the converted folder.

Multi-rank workers assert inside; ``run_distributed`` re-raises a failing rank's error."""

import dataclasses

import torch

from tests.support.convert_cli import convert
from tests.support.distributed import run_distributed
from tests.support.tiny_run import rl_config

TP2 = {"tensor_parallel": 2, "vocab_multiple": 16}


def _train_worker(rank, world, base_model, out):
    from megatron_fork.rl.rl_config import EvalConfig
    from megatron_fork.rl.rl_loop import run_rl
    from megatron_fork.trainer.trainer_config import ParallelConfig

    config = rl_config(base_model, out, steps=1)
    run_rl(dataclasses.replace(config, parallel=ParallelConfig(**TP2), eval=EvalConfig(every=0)))


def _logprob_worker(rank, world, base_model, checkpoint, result):
    from megatron_fork.trainer.actor import build_actor, init_parallel
    from megatron_fork.trainer.checkpoint import load_checkpoint
    from megatron_fork.trainer.trainer_config import OptimizerSettings, ParallelConfig
    from tests.support.megatron_logits import trainer_logprob_entropy

    parallel = ParallelConfig(**TP2)
    init_parallel(parallel, seed=rank)
    actor = build_actor(base_model, parallel, OptimizerSettings(), load_weights=False)
    load_checkpoint(checkpoint, actor.model, actor.optimizer)
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, actor.vocab_size, (4, 20), generator=gen)
    target = torch.randint(0, actor.vocab_size, (4, 20), generator=gen)
    outputs = trainer_logprob_entropy(actor.model, tokens, target, actor.vocab_size)
    if rank == 0:
        torch.save({"tokens": tokens, "target": target, "logprob": outputs[0]}, result)


def test_trainer_checkpoint_converts_to_hf_with_the_trainers_logprobs(base_model, tmp_path):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    run_distributed(_train_worker, 2, str(base_model), str(run))
    checkpoint = run / "checkpoints" / "step_00000001"
    convert("mcore-to-hf", "--mcore", str(checkpoint), "--out", str(tmp_path / "hf"))
    for name in ("config.json", "tokenizer.json"):
        assert (tmp_path / "hf" / name).read_bytes() == (base_model / name).read_bytes()

    result = tmp_path / "trainer_logprobs.pt"
    run_distributed(_logprob_worker, 2, str(base_model), str(checkpoint), str(result))
    expected = torch.load(result, weights_only=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        logits = model(expected["tokens"]).logits.double()
    logprob = logits.log_softmax(-1).gather(-1, expected["target"][..., None])[..., 0]
    base = AutoModelForCausalLM.from_pretrained(base_model).eval()
    with torch.no_grad():
        base_logits = base(expected["tokens"]).logits.double()
    assert (logits - base_logits).abs().max() > 1e-3  # the RL step changed the model
    error = (logprob - expected["logprob"].double()).abs().max().item()
    assert error <= 1e-5, f"HF log-probs differ from the trainer's by {error:.2e}"


def _actor_weights_worker(rank, world, base_model, converted):
    from megatron_fork.models.hf_mapping import iter_hf_weights
    from megatron_fork.trainer.actor import build_actor, init_parallel
    from megatron_fork.trainer.checkpoint import hf_metadata_dir
    from megatron_fork.trainer.trainer_config import OptimizerSettings, ParallelConfig

    parallel = ParallelConfig(pipeline_parallel=2, vocab_multiple=16)
    init_parallel(parallel, seed=rank)
    from_hf = build_actor(base_model, parallel, OptimizerSettings())
    from_mcore = build_actor(converted, parallel, OptimizerSettings())
    assert hf_metadata_dir(converted).name == "hf"
    assert from_mcore.hf_config.to_dict() == from_hf.hf_config.to_dict()
    expected = dict(iter_hf_weights(from_hf.model, from_hf.layout))
    for name, tensor in iter_hf_weights(from_mcore.model, from_mcore.layout):
        assert torch.equal(tensor, expected[name]), name


def test_trainer_starts_from_a_converted_checkpoint_at_another_layout(base_model, tmp_path):
    """hf-to-mcore at TP=2; the trainer's actor built from it at PP=2 has the HF weights."""
    converted = tmp_path / "mcore"
    convert("hf-to-mcore", "--hf", str(base_model), "--out", str(converted), "--tp", "2",
            "--vocab-multiple", "16", nproc=2)  # fmt: skip
    run_distributed(_actor_weights_worker, 2, str(base_model), str(converted))
