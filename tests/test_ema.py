"""LLaCA's dynamic EMA: betas and updates recomputed by hand on small tensors (both formulas)."""

from __future__ import annotations

import pytest
import torch

from cvit.methods.ema import DynamicEMA, layer_units


def l1(t: torch.Tensor) -> float:
    return float(t.abs().sum())


def tensors(*rows: list[float]) -> list[torch.Tensor]:
    return [torch.tensor(r, dtype=torch.float32) for r in rows]


def test_paper_formula_recomputed_by_hand():
    theta0 = tensors([1.0, -2.0], [0.5, 0.5, 0.5])
    ema = DynamicEMA("paper", fallback=0.99)
    ema.start(theta0)
    # step 1: no previous gradient -> beta = 1 - 0 * ... = 1, outside (0, 1) -> fallback 0.99
    theta1, g1 = tensors([0.9, -1.8], [0.4, 0.6, 0.5]), tensors([0.5, -1.0], [0.2, -0.2, 0.0])
    betas, fell_back = ema.step(theta1, g1)
    assert betas.tolist() == pytest.approx([0.99, 0.99]) and fell_back.tolist() == [True, True]
    ema1 = [0.99 * a + 0.01 * b for a, b in zip(theta0, theta1, strict=True)]
    assert all(torch.allclose(e, h) for e, h in zip(ema.ema, ema1, strict=True))
    # step 2: Eq. 45 with L1 norms per tensor
    theta2, g2 = tensors([0.2, -1.1], [0.3, 0.7, 0.45]), tensors([-3.0, 2.5], [0.1, -0.3, 0.05])
    expected = []
    for i in range(2):
        lag = l1(theta1[i] - ema1[i])
        drift = l1(theta2[i] - ema1[i])
        change = l1(g2[i] - g1[i])
        beta = 1 - lag * (1 + l1(g2[i])) / (drift * change)
        expected.append(beta if 0 < beta < 1 else 0.99)
    betas, fell_back = ema.step(theta2, g2)
    assert betas.tolist() == pytest.approx(expected, rel=1e-5)
    assert fell_back.tolist() == [not 0 < b < 1 or b == 0.99 for b in expected]
    assert any(not f for f in fell_back.tolist())  # the example exercises a dynamic beta
    for e, old, new, beta in zip(ema.ema, ema1, theta2, expected, strict=True):
        assert torch.allclose(e, beta * old + (1 - beta) * new, atol=1e-6)
    assert all(torch.equal(p, t) for p, t in zip(ema.prev_params, theta2, strict=True))
    assert all(torch.equal(p, g) for p, g in zip(ema.prev_grads, g2, strict=True))


def test_released_formula_recomputed_by_hand():
    theta1, g1 = tensors([1.0, 2.0, -1.0]), tensors([0.1, -0.2, 0.3])
    ema = DynamicEMA("released", released_fallback=0.01)
    ema.start(theta1)
    assert ema.step(theta1, g1) is None  # seeding step: the EMA starts from theta after the first step
    assert torch.equal(ema.ema[0], theta1[0])
    cases = [  # (theta_t, g_t): a dynamic alpha, then one outside (0, 1) that falls back to 0.01
        (tensors([4.0, -3.0, 2.0]), tensors([-2.0, 1.5, -1.0])),
        (tensors([4.0, -3.0, 2.1]), tensors([-2.0, 1.5, -1.1])),
    ]
    previous_grad, seen_fallback, seen_dynamic = g1[0], False, False
    for theta, g in cases:
        before = ema.ema[0].clone()
        alpha = 2 * (1 + l1(g[0])) / (l1(theta[0] - before) * l1(g[0] - previous_grad))
        fallback = not 0 < alpha < 1
        alpha = 0.01 if fallback else alpha
        betas, fell_back = ema.step(theta, g)
        assert betas.tolist() == pytest.approx([1 - alpha], rel=1e-5) and fell_back.tolist() == [fallback]
        assert torch.allclose(ema.ema[0], (1 - alpha) * before + alpha * theta[0], atol=1e-6)
        seen_fallback, seen_dynamic = seen_fallback or fallback, seen_dynamic or not fallback
        previous_grad = g[0]
    assert seen_fallback and seen_dynamic


def test_fixed_beta_is_plain_ema():
    theta0 = tensors([0.0, 0.0])
    ema = DynamicEMA("fixed", beta=0.9)
    ema.start(theta0)
    for value in (1.0, 2.0):
        ema.step(tensors([value, value]), tensors([0.0, 0.0]))
    assert ema.ema[0].tolist() == pytest.approx([0.9 * 0.1 + 0.2] * 2)  # 0.9 * (0.1 * 1) + 0.1 * 2


def test_undefined_beta_falls_back():
    """Zero gradient change divides by zero: the beta is undefined and falls back."""
    theta0 = tensors([1.0])
    ema = DynamicEMA("paper", fallback=0.97)
    ema.start(theta0)
    ema.step(tensors([1.5]), tensors([0.5]))
    betas, fell_back = ema.step(tensors([2.0]), tensors([0.5]))
    assert betas.tolist() == pytest.approx([0.97]) and fell_back.tolist() == [True]


def test_bad_arguments():
    with pytest.raises(ValueError, match="formula"):
        DynamicEMA("nope")
    with pytest.raises(ValueError, match="beta"):
        DynamicEMA("fixed", beta=1.0)
    with pytest.raises(ValueError, match="units"):
        DynamicEMA("paper").start(tensors([1.0], [2.0]), units=[0, 2])


def test_layer_units_join_a_lora_layers_a_and_b_and_a_modules_weight_and_bias():
    names = ["m.q_proj.lora_A.default.weight", "m.q_proj.lora_B.default.weight", "m.v_proj.lora_A.default.weight",
             "m.q_proj.lora_A.block1.weight", "m.projector.linear_1.weight", "m.projector.linear_1.bias",
             "m.v_proj.lora_B.default.weight"]
    assert layer_units(names) == [0, 0, 1, 0, 2, 2, 1]


def test_paper_formula_with_one_beta_per_layer_recomputed_by_hand():
    """Units {A, B} and {C}: each unit's L1 norm is the sum over its tensors; A and B take one beta."""
    theta0 = tensors([1.0, -2.0], [0.5, 0.5, 0.5], [3.0])
    ema = DynamicEMA("paper", fallback=0.99)
    ema.start(theta0, units=[0, 0, 1])
    theta1, g1 = tensors([0.9, -1.8], [0.4, 0.6, 0.5], [2.0]), tensors([0.5, -1.0], [0.2, -0.2, 0.0], [1.0])
    ema.step(theta1, g1)  # first step: fallback everywhere
    ema1 = [0.99 * a + 0.01 * b for a, b in zip(theta0, theta1, strict=True)]
    theta2, g2 = tensors([0.2, -1.1], [0.3, 0.7, 0.45], [1.5]), tensors([-3.0, 2.5], [0.1, -0.3, 0.05], [-2.0])
    expected = []
    for members in ([0, 1], [2]):
        lag = sum(l1(theta1[i] - ema1[i]) for i in members)
        drift = sum(l1(theta2[i] - ema1[i]) for i in members)
        change = sum(l1(g2[i] - g1[i]) for i in members)
        grad = sum(l1(g2[i]) for i in members)
        beta = 1 - lag * (1 + grad) / (drift * change)
        expected.append(beta if 0 < beta < 1 else 0.99)
    betas, fell_back = ema.step(theta2, g2)
    assert betas.tolist() == pytest.approx(expected, rel=1e-5) and not fell_back[0]
    per_tensor = DynamicEMA("paper", fallback=0.99)  # per-tensor betas differ for A and B
    per_tensor.start(theta0)
    per_tensor.step(theta1, g1)
    tensor_betas, _ = per_tensor.step(theta2, g2)
    assert tensor_betas[0] != pytest.approx(tensor_betas[1])
    for e, old, new, beta in zip(ema.ema, ema1, theta2, [expected[0], expected[0], expected[1]], strict=True):
        assert torch.allclose(e, beta * old + (1 - beta) * new, atol=1e-6)
