"""vocab_parallel_logprob_entropy (one process) against an fp64 torch.log_softmax reference.

The op takes fp32 (or bf16) logits; the reference runs in fp64 on the very same values, so the
only difference is the op's fp32 arithmetic. Relative error is max|a - b| / max|b|.
"""

import pytest
import torch

from megatron_fork.ops import vocab_parallel_logprob_entropy
from tests.support.reference import relative_error

TOL = 1e-5
"""Relative error allowed for fp32 logits (outputs and gradient)."""
BF16_OUTPUT_TOL = 1e-5
"""bf16 logits, outputs: the op upcasts the bf16 values to fp32, so outputs stay fp32-accurate."""
BF16_GRAD_TOL = 1e-2
"""bf16 logits, gradient: returned in the logits' dtype (bf16, 8 mantissa bits: eps 2**-8)."""


def _reference(logits64: torch.Tensor, target: torch.Tensor, temperature: float = 1.0):
    """fp64 (logprob, entropy) by torch.log_softmax; out-of-range targets give logprob 0."""
    log_p = torch.log_softmax(logits64 / temperature, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    vocab = logits64.shape[-1]
    in_range = (target >= 0) & (target < vocab)
    safe = torch.where(in_range, target, torch.zeros_like(target))
    logprob = log_p.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(in_range, logprob, torch.zeros_like(logprob)), entropy


def _inputs(lead_shape, vocab, seed=0, dtype=torch.float32, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*lead_shape, vocab, generator=gen) * scale).to(dtype)
    target = torch.randint(0, vocab, lead_shape, generator=gen)
    w1 = torch.randn(lead_shape, generator=gen, dtype=torch.float64)
    w2 = torch.randn(lead_shape, generator=gen, dtype=torch.float64)
    return logits, target, w1, w2


def _op_and_grad(logits, target, w1, w2, **kwargs):
    leaf = logits.clone().requires_grad_(True)
    logprob, entropy = vocab_parallel_logprob_entropy(leaf, target, **kwargs)
    (logprob * w1.to(logprob.dtype) + entropy * w2.to(entropy.dtype)).sum().backward()
    return logprob.detach(), entropy.detach(), leaf.grad


def _ref_and_grad(logits, target, w1, w2, temperature=1.0):
    leaf = logits.detach().to(torch.float64).requires_grad_(True)
    logprob, entropy = _reference(leaf, target, temperature)
    (logprob * w1 + entropy * w2).sum().backward()
    return logprob.detach(), entropy.detach(), leaf.grad


def _assert_close_to_reference(logits, target, w1, w2, tol=TOL, grad_tol=TOL, **kwargs):
    lp, h, grad = _op_and_grad(logits, target, w1, w2, **kwargs)
    ref_lp, ref_h, ref_grad = _ref_and_grad(logits, target, w1, w2, kwargs.get("temperature", 1.0))
    assert lp.dtype == torch.float32 and h.dtype == torch.float32
    assert lp.shape == target.shape and h.shape == target.shape
    assert relative_error(lp, ref_lp) <= tol
    assert relative_error(h, ref_h) <= tol
    assert grad.shape == logits.shape and grad.dtype == logits.dtype
    assert relative_error(grad, ref_grad) <= grad_tol


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 7, 24, 1000])
def test_matches_fp64_reference_for_every_chunk_size(chunk_size):
    logits, target, w1, w2 = _inputs([24], vocab=97, seed=1)
    _assert_close_to_reference(logits, target, w1, w2, chunk_size=chunk_size)


@pytest.mark.parametrize("temperature", [0.7, 1.3])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_matches_fp64_reference_with_temperature(temperature, chunk_size):
    logits, target, w1, w2 = _inputs([20], vocab=64, seed=2)
    _assert_close_to_reference(
        logits, target, w1, w2, temperature=temperature, chunk_size=chunk_size
    )


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_matches_fp64_reference_with_batch_and_sequence_dims(chunk_size):
    logits, target, w1, w2 = _inputs([3, 5], vocab=50, seed=3)
    _assert_close_to_reference(logits, target, w1, w2, chunk_size=chunk_size, temperature=1.3)


def test_non_contiguous_logits_match_reference():
    logits, target, w1, w2 = _inputs([4, 6], vocab=33, seed=4)
    logits_t = logits.transpose(0, 1)  # [6, 4, V], not contiguous
    assert not logits_t.is_contiguous()
    _assert_close_to_reference(logits_t, target.T, w1.T, w2.T, chunk_size=5)


def test_peaked_and_flat_rows_match_reference():
    """Near one-hot rows (large logits) and uniform rows (entropy = log V)."""
    logits, target, w1, w2 = _inputs([6], vocab=40, seed=5, scale=30.0)
    logits[0] = 0.0  # uniform
    lp, h, _ = _op_and_grad(logits, target, w1, w2)
    assert abs(float(h[0]) - float(torch.log(torch.tensor(40.0, dtype=torch.float64)))) < 1e-5
    assert abs(float(lp[0]) + float(torch.log(torch.tensor(40.0, dtype=torch.float64)))) < 1e-5
    _assert_close_to_reference(logits, target, w1, w2, chunk_size=4)


@pytest.mark.parametrize("bad_id", [-100, 97])
def test_out_of_range_target_gives_zero_logprob_and_no_logprob_gradient(bad_id):
    vocab = 97
    logits, target, w1, w2 = _inputs([8], vocab=vocab, seed=6)
    target[[1, 5]] = bad_id
    lp, h, grad = _op_and_grad(logits, target, w1, w2, chunk_size=3)
    assert lp[1] == 0.0 and lp[5] == 0.0
    _assert_close_to_reference(logits, target, w1, w2, chunk_size=3)

    # With only logprob in the objective, the out-of-range rows get exactly zero gradient.
    _, _, grad_lp_only = _op_and_grad(logits, target, w1, torch.zeros_like(w2), chunk_size=3)
    assert torch.equal(grad_lp_only[[1, 5]], torch.zeros(2, vocab))
    assert grad_lp_only[0].abs().sum() > 0
    # Entropy is still computed (and differentiated) for those rows.
    ref_lp, ref_h, _ = _ref_and_grad(logits, target, w1, w2)
    assert relative_error(h[[1, 5]], ref_h[[1, 5]]) <= TOL


def test_int32_target_is_accepted():
    logits, target, w1, w2 = _inputs([10], vocab=20, seed=7)
    lp32, h32, _ = _op_and_grad(logits, target.to(torch.int32), w1, w2)
    lp64, h64, _ = _op_and_grad(logits, target, w1, w2)
    assert torch.equal(lp32, lp64) and torch.equal(h32, h64)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_bf16_logits_give_fp32_outputs_close_to_reference(chunk_size):
    logits, target, w1, w2 = _inputs([2, 6], vocab=80, seed=8, dtype=torch.bfloat16)
    _assert_close_to_reference(
        logits,
        target,
        w1,
        w2,
        tol=BF16_OUTPUT_TOL,
        grad_tol=BF16_GRAD_TOL,
        chunk_size=chunk_size,
        temperature=0.7,
    )


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_unchanged_after_forward_and_backward(temperature, dtype):
    logits, target, w1, w2 = _inputs([3, 4], vocab=30, seed=9, dtype=dtype)
    logits.requires_grad_(True)
    snapshot = logits.detach().clone()
    lp, h = vocab_parallel_logprob_entropy(logits, target, temperature=temperature, chunk_size=5)
    assert torch.equal(logits.detach(), snapshot)
    (lp * w1.float() + h * w2.float()).sum().backward()
    assert torch.equal(logits.detach(), snapshot)


def test_gradient_through_entropy_only():
    logits, target, _, w2 = _inputs([9], vocab=45, seed=10)
    leaf = logits.clone().requires_grad_(True)
    _, h = vocab_parallel_logprob_entropy(leaf, target, chunk_size=4)
    (h * w2.float()).sum().backward()

    ref_leaf = logits.to(torch.float64).requires_grad_(True)
    _, ref_h = _reference(ref_leaf, target)
    (ref_h * w2).sum().backward()
    assert relative_error(leaf.grad, ref_leaf.grad) <= TOL


def test_gradient_through_logprob_only():
    logits, target, w1, _ = _inputs([9], vocab=45, seed=11)
    leaf = logits.clone().requires_grad_(True)
    lp, _ = vocab_parallel_logprob_entropy(leaf, target, chunk_size=4, temperature=1.3)
    (lp * w1.float()).sum().backward()

    ref_leaf = logits.to(torch.float64).requires_grad_(True)
    ref_lp, _ = _reference(ref_leaf, target, temperature=1.3)
    (ref_lp * w1).sum().backward()
    assert relative_error(leaf.grad, ref_leaf.grad) <= TOL


def test_logprob_gradient_is_onehot_minus_softmax():
    """Hand formula: d logprob / d z_j = (1[j = target] - p_j) / T, per row."""
    logits, target, _, _ = _inputs([5], vocab=12, seed=12)
    leaf = logits.clone().requires_grad_(True)
    lp, _ = vocab_parallel_logprob_entropy(leaf, target, temperature=0.7)
    lp.sum().backward()
    p = torch.softmax(logits.double() / 0.7, dim=-1)
    onehot = torch.nn.functional.one_hot(target, 12).double()
    assert relative_error(leaf.grad, (onehot - p) / 0.7) <= TOL


# ---- bad inputs --------------------------------------------------------------------------------


def test_shape_mismatch_raises_value_error():
    logits = torch.randn(4, 10)
    with pytest.raises(ValueError, match="leading dimensions must match"):
        vocab_parallel_logprob_entropy(logits, torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="leading dimensions must match"):
        vocab_parallel_logprob_entropy(logits, torch.zeros(4, 1, dtype=torch.int64))


def test_device_mismatch_raises_value_error_meta_device():
    """The check runs before any computation, so a meta tensor exercises it without a GPU."""
    logits = torch.empty(4, 10, device="meta")
    with pytest.raises(ValueError, match="move both"):
        vocab_parallel_logprob_entropy(logits, torch.zeros(4, dtype=torch.int64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="device mismatch needs a CUDA GPU")
def test_device_mismatch_raises_value_error_cuda():
    logits = torch.randn(4, 10, device="cuda")
    with pytest.raises(ValueError, match="move both"):
        vocab_parallel_logprob_entropy(logits, torch.zeros(4, dtype=torch.int64))


def test_integer_logits_raise_type_error():
    with pytest.raises(TypeError, match="logits must be floating point"):
        vocab_parallel_logprob_entropy(
            torch.ones(4, 10, dtype=torch.int64), torch.zeros(4, dtype=torch.int64)
        )


def test_float_target_raises_type_error():
    with pytest.raises(TypeError, match="target must hold integer token ids"):
        vocab_parallel_logprob_entropy(torch.randn(4, 10), torch.zeros(4))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_non_positive_temperature_raises_value_error(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        vocab_parallel_logprob_entropy(
            torch.randn(4, 10), torch.zeros(4, dtype=torch.int64), temperature=temperature
        )


@pytest.mark.parametrize("chunk_size", [0, -3])
def test_non_positive_chunk_size_raises_value_error(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        vocab_parallel_logprob_entropy(
            torch.randn(4, 10), torch.zeros(4, dtype=torch.int64), chunk_size=chunk_size
        )


def test_padded_vocabulary_columns_are_ignored_and_get_no_gradient():
    logits, target, w1, w2 = _inputs([9], vocab=20, seed=8)
    padded = torch.cat([logits, torch.full((9, 4), 50.0)], dim=1)  # TP padding to 24
    leaf = padded.clone().requires_grad_(True)
    lp, h = vocab_parallel_logprob_entropy(leaf, target, chunk_size=4, vocab_size=20)
    (lp * w1.float() + h * w2.float()).sum().backward()
    lp, h = lp.detach(), h.detach()
    ref_lp, ref_h, ref_grad = _ref_and_grad(logits, target, w1, w2)
    assert relative_error(lp, ref_lp) <= TOL and relative_error(h, ref_h) <= TOL
    assert relative_error(leaf.grad[:, :20], ref_grad) <= TOL
    assert torch.equal(leaf.grad[:, 20:], torch.zeros(9, 4))
