"""hf-to-mcore gives a Megatron model with Hugging Face's logits, at every layout.

Real ``Qwen3ForCausalLM`` folders (random weights, sharded safetensors) for tied and untied
embeddings and 1, 2 and 4 (= all) key/value heads are converted at TP=1, TP=2, PP=2 and
TP2xPP2 on gloo ranks; a fresh Megatron model loads each checkpoint and its fp32 logits must
match HF's within 1e-4 (max abs). One key/value head cannot be split over TP=2: that layout
is refused with its message. A checkpoint saved at TP2xPP1 and loaded at TP1xPP2 gives the
same logits (Megatron's resharding on load).

Multi-rank tests assert inside each rank's worker (``_..._worker``); ``run_distributed``
re-raises the first failing rank's error in the test.
"""

import pytest

from tests.support.distributed import run_distributed
from tests.support.hf_folders import write_hf_folder

MAX_ABS = 1e-4
VARIANTS = [(tie, kv) for tie in (False, True) for kv in (1, 2, 4)]


def _name(tie, kv):
    return f"{'tied' if tie else 'untied'}_kv{kv}"


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    for tie, kv in VARIANTS:
        write_hf_folder(root / _name(tie, kv), tie=tie, kv_heads=kv)
    return root


def _load_and_check_logits(checkpoint, hf_dir, parallel):
    from megatron_fork.trainer.actor import megatron_model, read_model_config
    from megatron_fork.trainer.checkpoint import load_model_weights
    from tests.support.hf_folders import read_expected
    from tests.support.megatron_logits import full_logits

    hf_config = read_model_config(checkpoint)
    model = megatron_model(hf_config, parallel)  # fresh random weights: the load must win
    load_model_weights(checkpoint, model)
    expected = read_expected(hf_dir)
    logits = full_logits(model, expected["tokens"], hf_config.vocab_size)
    if logits is not None:
        error = (logits - expected["logits"]).abs().max().item()
        assert error <= MAX_ABS, f"{checkpoint}: logits differ from HF by {error:.2e}"


def _parity_worker(rank, world, tp, pp, root, out_root):
    from checkpoints_convert.hf_to_mcore import convert_hf_to_mcore
    from megatron_fork.trainer.trainer_config import ParallelConfig
    from tests.support.megatron_setup import init_megatron

    init_megatron(tp=tp, pp=pp, seed=rank)
    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp, vocab_multiple=16)
    for tie, kv in VARIANTS:
        hf_dir, out = f"{root}/{_name(tie, kv)}", f"{out_root}/{_name(tie, kv)}"
        if kv % tp:
            with pytest.raises(ValueError, match=f"num_key_value_heads={kv} does not divide"):
                convert_hf_to_mcore(hf_dir, out, parallel)
            continue
        convert_hf_to_mcore(hf_dir, out, parallel)
        _load_and_check_logits(out, hf_dir, parallel)


@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_converted_checkpoint_gives_hf_logits(hf_folders, tmp_path, tp, pp):
    run_distributed(_parity_worker, tp * pp, tp, pp, str(hf_folders), str(tmp_path))
    for tie, kv in VARIANTS:
        written = (tmp_path / _name(tie, kv)).is_dir()
        assert written == (kv % tp == 0), _name(tie, kv)  # refused layouts write nothing
    assert not list(tmp_path.glob("*.tmp"))


def _reshard_worker(rank, world, hf_dir, out):
    from megatron.core import parallel_state as ps

    from checkpoints_convert.hf_to_mcore import convert_hf_to_mcore
    from megatron_fork.trainer.trainer_config import ParallelConfig
    from tests.support.megatron_setup import init_megatron

    init_megatron(tp=2, pp=1, seed=0)
    convert_hf_to_mcore(hf_dir, out, ParallelConfig(tensor_parallel=2, vocab_multiple=16))
    ps.destroy_model_parallel()
    init_megatron(tp=1, pp=2, seed=1)
    # vocab_multiple 128: the padded vocabulary differs from the saved one (64 rows vs 128).
    _load_and_check_logits(out, hf_dir, ParallelConfig(pipeline_parallel=2, vocab_multiple=128))


def test_saved_at_tp2_loads_at_pp2_with_the_same_logits(hf_folders, tmp_path):
    hf_dir = hf_folders / _name(False, 2)
    run_distributed(_reshard_worker, 2, str(hf_dir), str(tmp_path / "tp2"))
