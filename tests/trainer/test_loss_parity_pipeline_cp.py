"""Pipeline x context parallel: the 1F1B schedule's p2p shapes with CP-sharded sequences, and
loss and gradient parity against the single-process fp64 reference, through a two-stage
attention-free model (tests/support/pipeline_lookup_lm.py).

Multi-rank tests assert inside each rank's worker (``_..._worker``); ``run_distributed``
re-raises the first failing rank's error in the test.
"""

import torch

from megatron_fork.forking import ForkingLossConfig
from tests.support.distributed import run_distributed
from tests.support.megatron_setup import init_megatron, wrap_ddp
from tests.support.reference import reference_loss
from tests.support.step_data import make_step

NUM_MICROBATCHES = 4
MICRO_BATCH_SIZE = 1
SEQ_LEN = 8
VOCAB = 16
HIDDEN = 8
NUM_TOKEN_IDS = 24
RTOL = 1e-5


def _worker(rank, world, tp, pp, cp, data_path):
    from megatron.core import parallel_state as ps

    from tests.support.pipeline_lookup_lm import PipelineLookupLM, pipeline_lookup_config
    from tests.support.reference import relative_error
    from tests.support.step_runner import run_forking_step

    init_megatron(tp=tp, pp=pp, cp=cp)
    data = torch.load(data_path, weights_only=True)
    step, ref = data["step"], data["reference"]
    tp_rank = ps.get_tensor_model_parallel_rank()
    vocab_slice = slice(tp_rank * VOCAB // tp, (tp_rank + 1) * VOCAB // tp)
    config = pipeline_lookup_config(tp, pp, cp, HIDDEN)
    first, last = ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage()
    model = PipelineLookupLM(
        config, data["embedding"].float(), data["output"][vocab_slice].float(), first, last
    )
    ddp_model = wrap_ddp(model)

    cfg = ForkingLossConfig(entropy_coef=0.01)
    loss = run_forking_step(
        ddp_model, cfg, step, ref, step["tokens"], NUM_MICROBATCHES, MICRO_BATCH_SIZE, False
    )
    if last:
        assert relative_error(loss, ref["loss"]) <= RTOL, (float(loss), float(ref["loss"]))
        grad = model.output_layer.weight.main_grad
        assert relative_error(grad, ref["grad_output"][vocab_slice]) <= RTOL
    if first:
        assert relative_error(model.embedding.main_grad, ref["grad_embedding"]) <= RTOL


def test_pp2_x_cp2_matches_single_process(tmp_path):
    tp, pp, cp, world = 1, 2, 2, 4
    step = make_step(NUM_MICROBATCHES * MICRO_BATCH_SIZE, SEQ_LEN, VOCAB, seed=21)
    gen = torch.Generator().manual_seed(5)
    step["tokens"] = torch.randint(0, NUM_TOKEN_IDS, step["tokens"].shape, generator=gen)
    embedding = torch.randn(NUM_TOKEN_IDS, HIDDEN, generator=gen, dtype=torch.float64)
    output = torch.randn(VOCAB, HIDDEN, generator=gen, dtype=torch.float64)

    leaf_embedding = embedding.float().double().requires_grad_(True)
    leaf_output = output.float().double().requires_grad_(True)
    logits = leaf_embedding[step["tokens"]] @ leaf_output.T  # [G, S, V]
    reference = reference_loss(logits, step, ForkingLossConfig(entropy_coef=0.01), 4, 1)
    assert abs(reference["loss"]) > 1e-2, "test data gives a cancelling loss: change the data"
    reference["loss"].backward()
    reference["loss"] = reference["loss"].detach()
    reference["grad_embedding"], reference["grad_output"] = leaf_embedding.grad, leaf_output.grad
    data_path = tmp_path / "step.pt"
    torch.save(
        {"step": step, "reference": reference, "embedding": embedding, "output": output},
        data_path,
    )
    run_distributed(_worker, world, tp, pp, cp, str(data_path))
