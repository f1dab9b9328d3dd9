"""forking_policy_loss (one process) against hand-worked numbers and a plain reference."""

import math

import numpy as np
import pytest
import torch

from megatron_fork.forking import ForkingLossConfig, forking_policy_loss

# ---- the hand-worked example -------------------------------------------------------------------
# eps_low = 0.2, eps_high = 0.28 (clip range [0.8, 1.28]), dual clip c = 3, rho = 0.8.
# o_t = min(r A, clip(r, 0.8, 1.28) A); for A < 0: o_t = max(o_t, 3 A).
#
#  t  r    A     entropy  role                 o_t                                  d o_t / d lp
#  0  1.1  +2.0  0.9      selected, in range   min(2.2, 2.2) = 2.2                  r A = 2.2
#  1  1.5  +1.0  0.5      selected, clip high  min(1.5, 1.28) = 1.28                0
#  2  0.5  -1.0  0.7      selected, clip low   min(-0.5, -0.8) = -0.8; max(., -3)    0
#  3  4.0  -0.5  0.8      selected, dual clip  min(-2.0, -0.64) = -2.0; max(., -1.5)
#                                              = -1.5                               0
#  4  2.0  +1.0  0.1      valid, not selected  (not counted)                        0
#  5  1.3  +5.0  3.0      padding              (not counted)                        0
#
# k = ceil(0.8 * 5 valid) = 4: the four highest valid entropies, t0..t3 (padding's 3.0 ignored).
# sum_S o_t = 2.2 + 1.28 - 0.8 - 1.5 = 1.18
# all_tokens:      N = 5, loss = -1.18 / 5 = -0.236, d loss / d lp_0 = -2.2 / 5 = -0.44
# selected_tokens: N = 4, loss = -1.18 / 4 = -0.295, d loss / d lp_0 = -2.2 / 4 = -0.55

RATIOS = [1.1, 1.5, 0.5, 4.0, 2.0, 1.3]
ADVANTAGES = [2.0, 1.0, -1.0, -0.5, 1.0, 5.0]
ENTROPIES = [0.9, 0.5, 0.7, 0.8, 0.1, 3.0]
VALID = [True, True, True, True, True, False]
OLD_LOGPROB = [-1.0, -2.0, -0.5, -3.0, -1.5, -0.7]
HAND_CONFIG = dict(rho=0.8, eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)


def hand_inputs(dtype=torch.float64):
    old = torch.tensor(OLD_LOGPROB, dtype=dtype)
    logprob = (old + torch.tensor(RATIOS, dtype=torch.float64).log().to(dtype)).requires_grad_()
    return (
        logprob,
        old,
        torch.tensor(ADVANTAGES, dtype=dtype),
        torch.tensor(VALID),
        torch.tensor(ENTROPIES, dtype=torch.float32),
    )


@pytest.mark.parametrize(
    ("normalizer", "loss", "grad0"),
    [("all_tokens", -0.236, -0.44), ("selected_tokens", -0.295, -0.55)],
)
def test_hand_worked_loss_and_gradient(normalizer, loss, grad0):
    logprob, old, adv, valid, entropy = hand_inputs()
    config = ForkingLossConfig(normalizer=normalizer, **HAND_CONFIG)
    value, _ = forking_policy_loss(logprob, old, adv, valid, entropy, config)
    assert value.shape == ()
    assert value.item() == pytest.approx(loss, abs=1e-12)
    value.backward()
    expected = torch.zeros(6, dtype=torch.float64)
    expected[0] = grad0
    torch.testing.assert_close(logprob.grad, expected, atol=1e-12, rtol=0)


def test_hand_worked_loss_in_fp32():
    logprob, old, adv, valid, entropy = hand_inputs(torch.float32)
    value, _ = forking_policy_loss(
        logprob, old, adv, valid, entropy, ForkingLossConfig(**HAND_CONFIG)
    )
    value.backward()
    assert value.item() == pytest.approx(-0.236, abs=1e-6)
    assert logprob.grad[0].item() == pytest.approx(-0.44, abs=1e-6)
    assert torch.equal(logprob.grad[1:], torch.zeros(5))


def test_hand_worked_without_dual_clip():
    # t3 is no longer floored at -1.5: o_3 = -2.0 with d o_3 / d lp = r A = -2.0.
    # sum = 2.2 + 1.28 - 0.8 - 2.0 = 0.68; loss = -0.68 / 5 = -0.136; grad_3 = +2.0 / 5 = 0.4.
    logprob, old, adv, valid, entropy = hand_inputs()
    config = ForkingLossConfig(**{**HAND_CONFIG, "dual_clip_c": None})
    value, metrics = forking_policy_loss(logprob, old, adv, valid, entropy, config)
    value.backward()
    assert value.item() == pytest.approx(-0.136, abs=1e-12)
    expected = torch.tensor([-0.44, 0.0, 0.0, 0.4, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(logprob.grad, expected, atol=1e-12, rtol=0)
    assert metrics["clip_frac_dual"].item() == 0.0


def test_negative_advantage_between_clip_and_dual_clip_keeps_gradient():
    # r = 2, A = -1, c = 3: min(-2, -1.28) = -2; max(-2, -3) = -2. One valid, selected token:
    # loss = 2, d loss / d lp = -r A = 2.
    logprob = torch.tensor([math.log(2.0)], dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros(1, dtype=torch.float64)
    value, metrics = forking_policy_loss(
        logprob,
        zeros,
        torch.tensor([-1.0], dtype=torch.float64),
        torch.tensor([True]),
        torch.tensor([1.0]),
        ForkingLossConfig(rho=1.0, dual_clip_c=3.0),
    )
    value.backward()
    assert value.item() == pytest.approx(2.0, abs=1e-12)
    assert logprob.grad.item() == pytest.approx(2.0, abs=1e-12)
    assert metrics["clip_frac_low"].item() == 0.0 and metrics["clip_frac_dual"].item() == 0.0


def test_hand_worked_metrics():
    logprob, old, adv, valid, entropy = hand_inputs()
    _, metrics = forking_policy_loss(
        logprob, old, adv, valid, entropy, ForkingLossConfig(**HAND_CONFIG)
    )
    assert metrics["num_valid_tokens"].item() == 5
    assert metrics["num_selected_tokens"].item() == 4
    assert metrics["selected_fraction"].item() == pytest.approx(0.8)
    assert metrics["clip_frac_low"].item() == pytest.approx(0.25)  # t2
    assert metrics["clip_frac_high"].item() == pytest.approx(0.25)  # t1
    assert metrics["clip_frac_dual"].item() == pytest.approx(0.25)  # t3
    assert metrics["entropy_mean"].item() == pytest.approx(3.0 / 5, abs=1e-6)
    assert metrics["entropy_selected_mean"].item() == pytest.approx(2.9 / 4, abs=1e-6)
    assert metrics["entropy_selected_min"].item() == np.float32(0.5)
    assert metrics["entropy_selected_max"].item() == np.float32(0.9)
    r = np.array(RATIOS[:5])
    assert metrics["approx_kl"].item() == pytest.approx(np.mean(r - 1 - np.log(r)), rel=1e-6)
    for value in metrics.values():
        assert value.shape == () and value.dtype == torch.float32


# ---- plain reference ---------------------------------------------------------------------------


def reference_objective(logprob, old_logprob, adv, eps_low, eps_high, c):
    """o_t rewritten per sign of A: A >= 0: A min(r, 1 + eps_high);
    A < 0: A min(max(r, 1 - eps_low), c) (c = inf without dual clip)."""
    r = torch.exp(logprob - old_logprob)
    positive = adv * torch.minimum(r, torch.full_like(r, 1 + eps_high))
    c = float("inf") if c is None else c
    negative = adv * torch.minimum(
        torch.maximum(r, torch.full_like(r, 1 - eps_low)), torch.full_like(r, c)
    )
    return torch.where(adv >= 0, positive, negative)


def random_inputs(n=40, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, generator=gen, dtype=dtype) * 3
    logprob = (old + torch.randn(n, generator=gen, dtype=dtype) * 0.5).requires_grad_()
    adv = torch.randn(n, generator=gen, dtype=dtype)
    valid = torch.rand(n, generator=gen) < 0.8
    entropy = (torch.rand(n, generator=gen) * 2).requires_grad_()
    ref = old + torch.randn(n, generator=gen, dtype=dtype) * 0.3
    return logprob, old, adv, valid, entropy, ref


@pytest.mark.parametrize("normalizer", ["all_tokens", "selected_tokens"])
@pytest.mark.parametrize(
    ("kl_coef", "entropy_coef"), [(0.0, 0.0), (0.1, 0.0), (0.0, 0.05), (0.3, 0.02)]
)
@pytest.mark.parametrize("tokens", ["selected", "response"])
def test_matches_plain_reference_with_kl_and_entropy(normalizer, kl_coef, entropy_coef, tokens):
    logprob, old, adv, valid, entropy, ref = random_inputs(seed=1)
    config = ForkingLossConfig(
        rho=0.3,
        normalizer=normalizer,
        kl_coef=kl_coef,
        entropy_coef=entropy_coef,
        regularizer_tokens=tokens,
    )
    # Reference selection: top 30% of valid tokens by entropy (distinct random values).
    n_valid = int(valid.sum())
    k = math.ceil(0.3 * n_valid)
    valid_idx = valid.nonzero().flatten()
    top_idx = valid_idx[torch.argsort(entropy.detach()[valid_idx], descending=True)[:k]]
    selected = torch.zeros_like(valid)
    selected[top_idx] = True

    value, metrics = forking_policy_loss(logprob, old, adv, valid, entropy, config, ref_logprob=ref)
    value.backward()
    assert metrics["num_selected_tokens"].item() == k

    lp_ref = logprob.detach().clone().requires_grad_()
    h_ref = entropy.detach().clone().requires_grad_()
    per_token = reference_objective(lp_ref, old, adv, 0.2, 0.28, 10.0)
    delta = ref - lp_ref
    regularizer = -kl_coef * (torch.exp(delta) - delta - 1) + entropy_coef * h_ref
    n = n_valid if normalizer == "all_tokens" else k
    if tokens == "selected":
        expected = -((per_token + regularizer) * selected).sum() / n
    else:  # verl: the surrogate over the selection, the regularisers' mean over the response
        expected = -(per_token * selected).sum() / n - (regularizer * valid).sum() / n_valid
    expected.backward()

    assert value.item() == pytest.approx(expected.item(), abs=1e-12)
    torch.testing.assert_close(logprob.grad, lp_ref.grad, atol=1e-12, rtol=0)
    if entropy_coef > 0:
        torch.testing.assert_close(entropy.grad, h_ref.grad.to(entropy.grad.dtype))
    trained = selected if tokens == "selected" or kl_coef == 0 else valid
    assert torch.equal(
        logprob.grad[~trained], torch.zeros(int((~trained).sum()), dtype=torch.float64)
    )


def test_kl_term_hand_value():
    # One selected token, lp = 0, ref = ln 2: d = ln 2, k3 = 2 - ln 2 - 1 = 1 - ln 2.
    # r = 1, A = 0 -> o = 0. loss = -(0 - 0.5 * (1 - ln 2)) / 1 = 0.5 (1 - ln 2).
    # d loss / d lp = 0.5 * d k3 / d lp = 0.5 * (-exp(d) + 1) = 0.5 * (1 - 2) = -0.5.
    logprob = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    value, _ = forking_policy_loss(
        logprob,
        torch.zeros(1, dtype=torch.float64),
        torch.zeros(1, dtype=torch.float64),
        torch.tensor([True]),
        torch.tensor([1.0]),
        ForkingLossConfig(rho=1.0, kl_coef=0.5),
        ref_logprob=torch.tensor([math.log(2.0)], dtype=torch.float64),
    )
    value.backward()
    assert value.item() == pytest.approx(0.5 * (1 - math.log(2.0)), abs=1e-12)
    assert logprob.grad.item() == pytest.approx(-0.5, abs=1e-12)


# ---- empty normaliser, precomputed selection and normaliser -------------------------------------


@pytest.mark.parametrize("normalizer", ["all_tokens", "selected_tokens"])
def test_no_valid_tokens_gives_zero_loss_and_zero_grad(normalizer):
    logprob, old, adv, _, entropy, ref = random_inputs(n=6, seed=2)
    valid = torch.zeros(6, dtype=torch.bool)
    config = ForkingLossConfig(normalizer=normalizer, kl_coef=0.1, entropy_coef=0.1)
    value, metrics = forking_policy_loss(logprob, old, adv, valid, entropy, config, ref_logprob=ref)
    assert value.item() == 0.0 and math.isfinite(value.item())
    value.backward()
    assert torch.equal(logprob.grad, torch.zeros(6, dtype=torch.float64))
    assert metrics["num_valid_tokens"].item() == 0
    assert math.isnan(metrics["selected_fraction"].item())


def test_nothing_selected_with_selected_tokens_normaliser_gives_zero_loss():
    logprob, old, adv, valid, entropy, _ = random_inputs(n=8, seed=3)
    config = ForkingLossConfig(normalizer="selected_tokens")
    selected = torch.zeros(8, dtype=torch.bool)
    value, _ = forking_policy_loss(logprob, old, adv, valid, entropy, config, selected=selected)
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(logprob.grad, torch.zeros(8, dtype=torch.float64))


def test_precomputed_selection_is_used():
    # Select t4 (lowest entropy) and t0 instead of the top tokens: sum o = 1.28 + 2.2 = 3.48.
    logprob, old, adv, valid, entropy = hand_inputs()
    selected = torch.tensor([True, False, False, False, True, True])  # t5 is padding: dropped
    value, metrics = forking_policy_loss(
        logprob, old, adv, valid, entropy, ForkingLossConfig(**HAND_CONFIG), selected=selected
    )
    assert value.item() == pytest.approx(-3.48 / 5, abs=1e-12)
    assert metrics["num_selected_tokens"].item() == 2
    assert metrics["entropy_selected_min"].item() == np.float32(0.1)


def test_precomputed_selection_with_selected_tokens_normaliser_counts_valid_only():
    logprob, old, adv, valid, entropy = hand_inputs()
    selected = torch.tensor([True, False, False, False, True, True])
    config = ForkingLossConfig(normalizer="selected_tokens", **HAND_CONFIG)
    value, _ = forking_policy_loss(logprob, old, adv, valid, entropy, config, selected=selected)
    assert value.item() == pytest.approx(-3.48 / 2, abs=1e-12)


@pytest.mark.parametrize("normalizer", [10.0, torch.tensor(10.0, dtype=torch.float64), 10])
def test_precomputed_normaliser_is_used(normalizer):
    logprob, old, adv, valid, entropy = hand_inputs()
    value, _ = forking_policy_loss(
        logprob, old, adv, valid, entropy, ForkingLossConfig(**HAND_CONFIG), normalizer=normalizer
    )
    value.backward()
    assert value.item() == pytest.approx(-1.18 / 10, abs=1e-12)
    assert logprob.grad[0].item() == pytest.approx(-2.2 / 10, abs=1e-12)


@pytest.mark.parametrize("strategy", ["bottom", "all"])
def test_config_strategy_drives_selection(strategy):
    # bottom, k = 4: t4, t1, t2, t3 -> 1.28 + 1.28 - 0.8 - 1.5 = 0.26 (t4: r = 2, A = 1 -> 1.28)
    # all: t0..t4 -> 1.18 + 1.28 = 2.46
    logprob, old, adv, valid, entropy = hand_inputs()
    config = ForkingLossConfig(strategy=strategy, **HAND_CONFIG)
    value, _ = forking_policy_loss(logprob, old, adv, valid, entropy, config)
    expected = {"bottom": 0.26, "all": 2.46}[strategy]
    assert value.item() == pytest.approx(-expected / 5, abs=1e-12)


# ---- errors ------------------------------------------------------------------------------------


def test_kl_coef_without_ref_logprob_raises():
    logprob, old, adv, valid, entropy = hand_inputs()
    with pytest.raises(ValueError, match="kl_coef > 0 needs ref_logprob"):
        forking_policy_loss(logprob, old, adv, valid, entropy, ForkingLossConfig(kl_coef=0.1))


@pytest.mark.parametrize(
    "which", ["logprob", "old_logprob", "advantages", "entropy", "ref_logprob"]
)
def test_mismatched_shape_raises_naming_the_tensor(which):
    logprob, old, adv, valid, entropy = hand_inputs()
    args = dict(
        logprob=logprob, old_logprob=old, advantages=adv, entropy=entropy, ref_logprob=old.clone()
    )
    args[which] = args[which].detach()[:5]
    ref = args.pop("ref_logprob")
    with pytest.raises(ValueError, match=which):
        forking_policy_loss(
            valid_mask=valid, config=ForkingLossConfig(kl_coef=0.1), ref_logprob=ref, **args
        )


def test_non_bool_valid_mask_raises():
    logprob, old, adv, valid, entropy = hand_inputs()
    with pytest.raises(TypeError, match="valid_mask must be bool"):
        forking_policy_loss(logprob, old, adv, valid.float(), entropy, ForkingLossConfig())


def test_mismatched_selected_shape_raises():
    """A precomputed ``selected`` must have valid_mask's shape; [1, 3] must not broadcast to
    [2, 3] and silently select whole columns."""
    logprob = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros(2, 3, dtype=torch.float64)
    valid = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="selected"):
        forking_policy_loss(
            logprob,
            zeros,
            torch.ones(2, 3, dtype=torch.float64),
            valid,
            torch.rand(2, 3),
            ForkingLossConfig(),
            selected=torch.ones(1, 3, dtype=torch.bool),
        )


def test_huge_ratio_on_a_padding_or_unselected_slot_leaves_gradients_finite():
    # exp(logprob - old) overflows at t4 (unselected) and t5 (padding): masked before the exp.
    logprob, old, adv, valid, entropy = hand_inputs()
    old = old.clone()
    old[4] = old[5] = -1e4
    value, metrics = forking_policy_loss(
        logprob, old, adv, valid, entropy, ForkingLossConfig(**HAND_CONFIG)
    )
    value.backward()
    assert torch.isfinite(logprob.grad).all()
    assert logprob.grad[0].item() == pytest.approx(-0.44, abs=1e-12)  # unchanged by the slots
    assert not torch.isfinite(metrics["approx_kl"])  # t4 is valid: its KL really is huge


@pytest.mark.parametrize(("advantage", "dual_clip_c"), [(1.0, 10.0), (-1.0, 10.0), (-1.0, None)])
def test_log_ratio_95_is_clamped_to_20_as_verl(advantage, dual_clip_c):
    # t0: log r = 95 (exp overflows fp32 to inf: NaN gradient unclamped). verl clamps log r to
    # +-20: r = e^20, and the clamp passes no gradient. A = +1: o = min(e^20, 1.28) = 1.28.
    # A = -1, c = 10: min(-e^20, -0.8) = -e^20, max(., -10) = -10. A = -1, no dual clip: -e^20.
    # t1: log r = ln 1.1, A = 2, in range: o = 2.2, d o / d lp = 2.2. rho = 1, N = 2.
    old = torch.tensor([-100.0, -1.0])
    logprob = torch.tensor([-5.0, -1.0 + math.log(1.1)]).requires_grad_()
    adv = torch.tensor([advantage, 2.0])
    config = ForkingLossConfig(rho=1.0, dual_clip_c=dual_clip_c)
    value, _ = forking_policy_loss(logprob, old, adv, torch.ones(2, dtype=torch.bool),
                                   torch.ones(2), config)  # fmt: skip
    value.backward()
    o0 = {(1.0, 10.0): 1.28, (-1.0, 10.0): -10.0, (-1.0, None): -math.exp(20.0)}
    expected = -(o0[(advantage, dual_clip_c)] + 2.2) / 2
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert torch.isfinite(logprob.grad).all()
    torch.testing.assert_close(logprob.grad, torch.tensor([0.0, -1.1]))


def test_k3_kl_is_bounded_as_verl_low_var_kl():
    """verl's low_var_kl: d = clamp(ref - logprob, +-20), kl = clamp(exp(d) - d - 1, +-10). By
    hand: d = 0.5 -> e^0.5 - 1.5; d = 3 -> e^3 - 4 = 16.09 -> 10; d = 95 -> 10 with a zero,
    finite gradient (unclamped: inf and NaN)."""
    from megatron_fork.forking.surrogate import k3_kl

    d = torch.tensor([0.5, 3.0, 95.0, -95.0], requires_grad=True)
    kl = k3_kl(d)
    expected = [math.exp(0.5) - 1.5, 10.0, 10.0, math.exp(-20.0) + 20.0 - 1.0]
    assert kl.tolist() == pytest.approx([min(e, 10.0) for e in expected], rel=1e-6)
    kl.sum().backward()
    assert torch.isfinite(d.grad).all()
    assert d.grad.tolist() == pytest.approx([math.exp(0.5) - 1.0, 0.0, 0.0, 0.0], rel=1e-6)
