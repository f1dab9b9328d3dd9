"""Loss and parameter-gradient parity through a real Megatron GPTModel (Qwen3 style: GQA,
qk-layernorm, RMSNorm, SwiGLU, RoPE) under TP=2, PP=2 (1F1B, 4 micro-batches), DP=2 and
TP2xPP2, against the same model in one process with a plain fp64 PyTorch loss.
(Context parallelism is covered by the lookup-model tests: Megatron's local attention has no CP.)

Multi-rank tests assert inside each rank's worker (``_..._worker``); ``run_distributed``
re-raises the first failing rank's error in the test.
"""

import pytest
import torch

from megatron_fork.forking import ForkingLossConfig
from tests.support.distributed import run_distributed
from tests.support.megatron_setup import init_megatron, wrap_ddp
from tests.support.step_data import make_step

NUM_MICROBATCHES = 4
MICRO_BATCH_SIZE = 1
SEQ_LEN = 8
RTOL = 1e-5


def _shape():
    from megatron_fork.models.gpt import GPTShape

    return GPTShape(vocab_size=64, hidden_size=32, num_layers=2, ffn_hidden_size=64)


def _build(tp, pp, per_token):
    from megatron.core import parallel_state as ps

    from megatron_fork.models.gpt import build_gpt_model

    init_megatron(tp=tp, pp=pp, seed=1234)
    model = build_gpt_model(
        _shape(),
        tp,
        pp,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        calculate_per_token_loss=per_token,
    )
    return model


def _reference_worker(rank, world, cfg_fields, dp, data_path, out_path):
    """TP=1, PP=1 model; loss from its logits by the plain fp64 reference."""
    from tests.support.reference import reference_loss

    model = _build(1, 1, per_token=False)
    step = torch.load(data_path, weights_only=True)
    cfg = ForkingLossConfig(**cfg_fields)
    g = step["tokens"].shape[0]
    positions = torch.arange(SEQ_LEN).expand(g, SEQ_LEN)
    logits = model(step["tokens"], positions, None, labels=None)  # [G, S, V]
    ref = reference_loss(logits.double(), step, cfg, NUM_MICROBATCHES, dp)
    assert abs(ref["loss"]) > 1e-2, "test data gives a cancelling loss: change the data"
    ref["loss"].backward()
    ref["loss"] = ref["loss"].detach()
    ref["state"] = {k: v.detach() for k, v in model.state_dict().items() if "_extra" not in k}
    ref["grads"] = {n: p.grad for n, p in model.named_parameters()}
    torch.save(ref, out_path)


def _parallel_worker(rank, world, tp, pp, per_token, cfg_fields, data_path, ref_path):
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    from tests.support.megatron_shards import load_full_state_dict, named_full_shards
    from tests.support.reference import relative_error
    from tests.support.step_runner import run_forking_step

    model = _build(tp, pp, per_token)
    ddp_model = wrap_ddp(model)
    step = torch.load(data_path, weights_only=True)
    ref = torch.load(ref_path, weights_only=True)
    tp_rank = ps.get_tensor_model_parallel_rank()
    offset = get_transformer_layer_offset(model.config)
    load_full_state_dict(model, ref["state"], tp_rank, tp, offset)

    cfg = ForkingLossConfig(**cfg_fields)
    loss = run_forking_step(
        ddp_model, cfg, step, ref, step["tokens"], NUM_MICROBATCHES, MICRO_BATCH_SIZE, per_token
    )
    if loss is not None:
        assert relative_error(loss, ref["loss"]) <= RTOL, (float(loss), float(ref["loss"]))
    for name, param, expected in named_full_shards(model, ref["grads"], tp_rank, tp, offset):
        error = relative_error(param.main_grad, expected)
        assert error <= RTOL, f"{name}: gradient relative error {error:.2e}"


LAYOUTS = {  # name: (world size, TP, PP)
    "TP2": (2, 2, 1),
    "PP2": (2, 1, 2),
    "DP2": (2, 1, 1),
    "TP2xPP2": (4, 2, 2),
}


def _run(tmp_path, layout, cfg_fields, per_token):
    world, tp, pp = LAYOUTS[layout]
    dp = world // (tp * pp)
    num_samples = NUM_MICROBATCHES * dp * MICRO_BATCH_SIZE
    # (DP2 draws other data: its seed-9 step cancels to |loss| < 1e-2 with the entropy term)
    step = make_step(num_samples, SEQ_LEN, _shape().vocab_size, seed=7 + world + 20 * (dp - 1))
    data_path, ref_path = tmp_path / "step.pt", tmp_path / "reference.pt"
    torch.save(step, data_path)
    run_distributed(_reference_worker, 1, cfg_fields, dp, str(data_path), str(ref_path))
    run_distributed(
        _parallel_worker, world, tp, pp, per_token, cfg_fields, str(data_path), str(ref_path)
    )


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_gpt_paper_setting_matches_single_process(tmp_path, layout):
    _run(tmp_path, layout, dict(entropy_coef=0.01), per_token=False)


def test_gpt_public_code_variant_per_token_contract_tp2xpp2(tmp_path):
    cfg = dict(scope="local_microbatch", normalizer="selected_tokens", rho=0.5)
    _run(tmp_path, "TP2xPP2", cfg, per_token=True)
