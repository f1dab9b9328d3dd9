"""Loss and gradient parity w.r.t. the logits under TP, CP, DP and their products.

A lookup-table model (tests/support/lookup_lm.py) makes the logits parameters; the step runs
through Megatron's real no-pipelining schedule, DDP and finalize_model_grads on gloo ranks, and
is compared with the single-process fp64 reference (tests/support/reference.py).

Multi-rank tests assert inside each rank's worker (``_..._worker``); ``run_distributed``
re-raises the first failing rank's error in the test.
"""

import pytest
import torch

from megatron_fork.forking import ForkingLossConfig
from tests.support.distributed import run_distributed
from tests.support.megatron_setup import init_megatron, wrap_ddp
from tests.support.reference import reference_loss
from tests.support.step_data import make_step

NUM_MICROBATCHES = 2
MICRO_BATCH_SIZE = 2
SEQ_LEN = 8
VOCAB = 16
RTOL = 1e-5


def _worker(rank, world, tp, cp, per_token, cfg_fields, data_path):
    from megatron.core import parallel_state as ps

    from tests.support.lookup_lm import LookupLM, lookup_config
    from tests.support.reference import relative_error
    from tests.support.step_runner import run_forking_step

    init_megatron(tp=tp, cp=cp)
    cfg = ForkingLossConfig(**cfg_fields)
    data = torch.load(data_path, weights_only=True)
    step, ref = data["step"], data["reference"]
    tp_rank = ps.get_tensor_model_parallel_rank()
    vocab_slice = slice(tp_rank * VOCAB // tp, (tp_rank + 1) * VOCAB // tp)

    config = lookup_config(tp, cp, per_token)
    model = LookupLM(step["logits"][:, vocab_slice].float(), config)
    ddp_model = wrap_ddp(model)

    loss = run_forking_step(
        ddp_model, cfg, step, ref, step["order"], NUM_MICROBATCHES, MICRO_BATCH_SIZE, per_token
    )
    assert relative_error(loss, ref["loss"]) <= RTOL, (float(loss), float(ref["loss"]))
    expected = ref["grad"][:, vocab_slice]
    assert relative_error(model.table.main_grad, expected) <= RTOL


LAYOUTS = {  # name: (world size, TP, CP)
    "TP2": (2, 2, 1),
    "CP2": (2, 1, 2),
    "DP2": (2, 1, 1),
    "DP2xCP2": (4, 1, 2),
    "TP2xCP2": (4, 2, 2),
}

CONFIGS = {
    "paper": dict(),  # top 20%, global_step, all_tokens
    "public_code": dict(scope="local_microbatch", normalizer="selected_tokens"),
    "global_microbatch_bottom": dict(scope="global_microbatch", strategy="bottom", rho=0.8),
    "all_tokens_kl_entropy": dict(strategy="all", kl_coef=0.1, entropy_coef=0.01),
    "temperature": dict(rho=0.5, temperature=0.7, chunk_size=3, entropy_coef=0.05),
}


def _run_case(tmp_path, layout, config_name, per_token):
    world, tp, cp = LAYOUTS[layout]
    dp = world // (tp * cp)
    cfg_fields = CONFIGS[config_name]
    cfg = ForkingLossConfig(**cfg_fields)
    num_samples = NUM_MICROBATCHES * dp * MICRO_BATCH_SIZE
    step = make_step(num_samples, SEQ_LEN, VOCAB, seed=world + tp)
    table = step["logits"].clone().requires_grad_(True)  # [G*S, V]: the lookup model
    logits = table.view(num_samples, SEQ_LEN, VOCAB)
    reference = reference_loss(logits, step, cfg, NUM_MICROBATCHES, dp)
    assert abs(reference["loss"]) > 1e-2, "test data gives a cancelling loss: change the data"
    reference["loss"].backward()
    reference["loss"] = reference["loss"].detach()
    reference["grad"] = table.grad
    data_path = tmp_path / "step.pt"
    torch.save({"step": step, "reference": reference}, data_path)
    run_distributed(_worker, world, tp, cp, per_token, cfg_fields, str(data_path))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_paper_setting_matches_reference(tmp_path, layout):
    _run_case(tmp_path, layout, "paper", per_token=False)


@pytest.mark.parametrize("config_name", [c for c in CONFIGS if c != "paper"])
def test_loss_variants_match_reference_under_dp2xcp2(tmp_path, config_name):
    _run_case(tmp_path, "DP2xCP2", config_name, per_token=False)


@pytest.mark.parametrize("layout", ["DP2xCP2", "TP2xCP2"])
def test_per_token_loss_contract_matches_reference(tmp_path, layout):
    _run_case(tmp_path, layout, "public_code", per_token=True)
