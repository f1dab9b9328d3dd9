"""Checkpoints across layer specs: a model written with the local spec (torch norms, no
``_extra_state``) loads into a model whose norms carry ``_extra_state`` as Transformer Engine's
do (the TE model on a GPU loading a base model converted on CPU), and back (a TE checkpoint
read on CPU); the extra state round-trips between models that both carry it; and a weight the
checkpoint really lacks is still refused by name."""

import pytest
import torch

from tests.support.distributed import run_distributed
from tests.support.te_like_norm import te_like_norms_

META = {"recipe": "blockwise", "amax_history_len": 4}


def _model(seed: int, te_like: bool):
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_fork.models.gpt import GPTShape, build_gpt_model

    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    model = build_gpt_model(GPTShape(vocab_size=64))
    norms = te_like_norms_(model, META if seed == 0 else {}) if te_like else []
    return model, norms


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def _cross_spec_worker(rank, world, root, saved_te_like, load_te_like):
    from megatron_fork.trainer.checkpoint import load_model_weights, write_checkpoint
    from tests.support.megatron_setup import init_megatron

    init_megatron()
    source, _ = _model(seed=0, te_like=saved_te_like)
    write_checkpoint(f"{root}/ckpt", source)
    target, norms = _model(seed=1, te_like=load_te_like)  # other weights: the load must win
    load_model_weights(f"{root}/ckpt", target)
    expected = {k: v for k, v in _state(source).items() if not k.endswith("_extra_state")}
    got = {k: v for k, v in _state(target).items() if not k.endswith("_extra_state")}
    assert got.keys() == expected.keys()
    for name, tensor in got.items():
        assert torch.equal(tensor, expected[name]), name
    tokens = torch.randint(0, 64, (2, 8))
    positions = torch.arange(8).expand(2, 8)
    assert torch.equal(target(tokens, positions, None), source(tokens, positions, None))
    # TE-like -> TE-like: the saved extra state is read back; local -> TE-like: kept as it was.
    assert all(norm.meta == (META if saved_te_like else {}) for norm in norms)


@pytest.mark.parametrize(
    ("saved_te_like", "load_te_like"),
    [(False, True), (True, False), (True, True)],
    ids=["local-into-te", "te-into-local", "te-into-te"],
)
def test_checkpoints_cross_layer_specs(tmp_path, saved_te_like, load_te_like):
    run_distributed(_cross_spec_worker, 1, str(tmp_path), saved_te_like, load_te_like)


def _missing_weight_worker(rank, world, root):
    from megatron_fork.trainer.checkpoint import load_model_weights, write_checkpoint
    from tests.support.megatron_setup import init_megatron

    init_megatron()
    write_checkpoint(f"{root}/ckpt", _model(seed=0, te_like=False)[0])
    target, _ = _model(seed=1, te_like=True)
    target.decoder.final_layernorm.register_parameter("bias", torch.nn.Parameter(torch.zeros(32)))
    with pytest.raises(
        ValueError, match=r"does not fit the model.*\(1: .*decoder\.final_layernorm\.bias"
    ):
        load_model_weights(f"{root}/ckpt", target)


def test_a_weight_the_checkpoint_lacks_is_refused_by_name(tmp_path):
    run_distributed(_missing_weight_worker, 1, str(tmp_path))


class _UncheckpointedExtraState(torch.nn.Module):
    """A module with ``_extra_state`` that its sharded state dict never asks for, as Megatron's
    ``TEDotProductAttention`` (its ``sharded_state_dict`` returns nothing unless the softmax is
    learnable): the key is missing from what a load returns."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))

    def get_extra_state(self):
        return torch.zeros(0, dtype=torch.uint8)

    def set_extra_state(self, state):
        pass


def test_extra_state_the_module_never_asked_for_may_be_missing():
    from megatron_fork.trainer.checkpoint_fit import load_model_state

    module = torch.nn.Sequential(_UncheckpointedExtraState())
    load_model_state("ckpt", module, {"0.weight": torch.full((3,), 2.0)}, absent=set())
    assert module[0].weight.tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(RuntimeError, match=r"missing \['0.weight'\]"):
        load_model_state("ckpt", module, {}, absent=set())  # a weight is never tolerated
