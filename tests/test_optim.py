"""Optimizers against plain scalar loops of the published rules; clipping; the lr schedule."""

import math

import numpy as np
import pytest

from mpipipe.config.schema import OptimConfig
from mpipipe.optim import (
    SGD,
    AdamW,
    ParamGroup,
    build_optimizer,
    clip_coefficient,
    learning_rate,
)

WEIGHT_DECAYS = (0.1, 0.0)


def make_groups(rng, dtype=np.float64):
    return [
        ParamGroup(rng.normal(size=6).astype(dtype), np.zeros(6, dtype), weight_decay)
        for weight_decay in WEIGHT_DECAYS
    ]


def gradient_sequence(rng, steps):
    return [[rng.normal(size=6) for _ in WEIGHT_DECAYS] for _ in range(steps)]


def adamw_loop(params, gradients, lrs, scales, beta1, beta2, eps):
    """AdamW (Loshchilov & Hutter 2019, Algorithm 2, PyTorch form) with Python floats."""
    params = [list(p) for p in params]
    m = [[0.0] * len(p) for p in params]
    v = [[0.0] * len(p) for p in params]
    for step, (grads, lr, scale) in enumerate(zip(gradients, lrs, scales, strict=True), start=1):
        for g_index, (weight_decay, grad) in enumerate(zip(WEIGHT_DECAYS, grads, strict=True)):
            for i, raw in enumerate(grad):
                g = raw * scale
                p = params[g_index][i] * (1 - lr * weight_decay)
                m[g_index][i] = beta1 * m[g_index][i] + (1 - beta1) * g
                v[g_index][i] = beta2 * v[g_index][i] + (1 - beta2) * g * g
                m_hat = m[g_index][i] / (1 - beta1**step)
                v_hat = v[g_index][i] / (1 - beta2**step)
                params[g_index][i] = p - lr * m_hat / (math.sqrt(v_hat) + eps)
    return params


def sgd_loop(params, gradients, lrs, scales, momentum):
    """SGD with heavy-ball momentum and L2 weight decay, with Python floats."""
    params = [list(p) for p in params]
    velocity = [[0.0] * len(p) for p in params]
    for grads, lr, scale in zip(gradients, lrs, scales, strict=True):
        for g_index, (weight_decay, grad) in enumerate(zip(WEIGHT_DECAYS, grads, strict=True)):
            for i, raw in enumerate(grad):
                g = raw * scale + weight_decay * params[g_index][i]
                velocity[g_index][i] = momentum * velocity[g_index][i] + g
                params[g_index][i] -= lr * velocity[g_index][i]
    return params


def run(optimizer, groups, gradients, lrs, scales):
    for grads, lr, scale in zip(gradients, lrs, scales, strict=True):
        for group, grad in zip(groups, grads, strict=True):
            group.grad[...] = grad
        optimizer.step(lr, grad_scale=scale)


LRS = [1e-2, 2e-2, 5e-3, 1e-2, 3e-3]
SCALES = [1.0, 0.5, 1.0, 0.25, 0.8]


def test_adamw_matches_scalar_loop():
    rng = np.random.default_rng(0)
    groups = make_groups(rng)
    start = [g.param.copy() for g in groups]
    gradients = gradient_sequence(rng, len(LRS))
    optimizer = AdamW(groups, beta1=0.9, beta2=0.95, eps=1e-8)
    run(optimizer, groups, gradients, LRS, SCALES)
    expected = adamw_loop(start, gradients, LRS, SCALES, 0.9, 0.95, 1e-8)
    for group, want in zip(groups, expected, strict=True):
        np.testing.assert_allclose(group.param, want, rtol=1e-12)
    assert optimizer.step_count == len(LRS)


def test_sgd_matches_scalar_loop():
    rng = np.random.default_rng(1)
    groups = make_groups(rng)
    start = [g.param.copy() for g in groups]
    gradients = gradient_sequence(rng, len(LRS))
    optimizer = SGD(groups, momentum=0.9)
    run(optimizer, groups, gradients, LRS, SCALES)
    expected = sgd_loop(start, gradients, LRS, SCALES, 0.9)
    for group, want in zip(groups, expected, strict=True):
        np.testing.assert_allclose(group.param, want, rtol=1e-12)


def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    groups = make_groups(rng)
    tensors = [torch.tensor(g.param.copy(), requires_grad=True) for g in groups]
    reference = torch.optim.AdamW(
        [{"params": [t], "weight_decay": g.weight_decay} for t, g in zip(tensors, groups,
                                                                        strict=True)],
        lr=1.0, betas=(0.9, 0.95), eps=1e-8,
    )
    optimizer = AdamW(groups, beta1=0.9, beta2=0.95, eps=1e-8)
    gradients = gradient_sequence(rng, len(LRS))
    for grads, lr in zip(gradients, LRS, strict=True):
        for tensor, grad in zip(tensors, grads, strict=True):
            tensor.grad = torch.tensor(grad)
        for torch_group in reference.param_groups:
            torch_group["lr"] = lr
        reference.step()
    run(optimizer, groups, gradients, LRS, [1.0] * len(LRS))
    for group, tensor in zip(groups, tensors, strict=True):
        np.testing.assert_allclose(group.param, tensor.detach().numpy(), rtol=1e-10)


@pytest.mark.parametrize("kind", [AdamW, SGD])
def test_float32_state_keeps_dtype_and_tracks_float64(kind):
    results = {}
    for dtype in (np.float32, np.float64):
        rng = np.random.default_rng(3)
        groups = make_groups(rng, dtype)
        gradients = gradient_sequence(rng, len(LRS))
        if kind is AdamW:
            optimizer = AdamW(groups, beta1=0.9, beta2=0.95, eps=1e-8)
        else:
            optimizer = SGD(groups, momentum=0.9)
        run(optimizer, groups, gradients, LRS, SCALES)
        results[dtype] = groups
        for group, state in zip(groups, optimizer.state, strict=True):
            assert group.param.dtype == dtype
            assert all(array.dtype == dtype for array in state.values())
    for single, double in zip(results[np.float32], results[np.float64], strict=True):
        np.testing.assert_allclose(single.param, double.param, rtol=1e-5, atol=1e-6)


def test_optimizers_assert_what_the_config_schema_checks():
    with pytest.raises(ValueError, match="adamv"):
        build_optimizer([], OptimConfig(name="adamv"))
    for bad in (OptimConfig(beta1=1.0), OptimConfig(beta2=-0.1), OptimConfig(eps=0.0),
                OptimConfig(name="sgd", momentum=1.0)):
        with pytest.raises(ValueError):
            build_optimizer([], bad)


def test_clip_coefficient_brings_the_norm_to_max_norm():
    rng = np.random.default_rng(7)
    grads = [rng.normal(size=10) * 5, rng.normal(size=3) * 5]
    total_norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
    coefficient = clip_coefficient(total_norm, max_norm=1.0)
    clipped_norm = math.sqrt(sum(float(np.sum((g * coefficient) ** 2)) for g in grads))
    assert clipped_norm == pytest.approx(1.0, rel=1e-5)
    assert clip_coefficient(total_norm, max_norm=2 * total_norm) == 1.0
    assert clip_coefficient(total_norm, max_norm=0.0) == 1.0
    with pytest.raises(ValueError, match="max_norm"):
        clip_coefficient(total_norm, max_norm=-1.0)


def test_warmup_is_linear_and_reaches_peak():
    config = OptimConfig(lr=1e-3, warmup_steps=8, min_lr_ratio=0.1)
    warmup = [learning_rate(step, config, total_steps=50) for step in range(8)]
    np.testing.assert_allclose(np.diff(warmup), warmup[0], rtol=1e-12)
    assert warmup[-1] == pytest.approx(config.lr)
    assert warmup[0] > 0


def test_cosine_decay_is_monotone_and_ends_at_min_lr():
    config = OptimConfig(lr=1e-3, warmup_steps=5, min_lr_ratio=0.1, decay="cosine")
    total = 45
    decay = [learning_rate(step, config, total) for step in range(5, total + 1)]
    assert all(later <= earlier for earlier, later in zip(decay, decay[1:], strict=False))
    assert decay[0] == pytest.approx(config.lr)
    assert decay[-1] == pytest.approx(config.lr * config.min_lr_ratio)
    # Half way through the decay the cosine sits half way between peak and floor.
    assert learning_rate(25, config, total) == pytest.approx((1e-3 + 1e-4) / 2)
    assert learning_rate(100, config, total) == pytest.approx(1e-4)


def test_constant_decay_and_no_warmup():
    config = OptimConfig(lr=2e-3, warmup_steps=0, decay="constant")
    assert {learning_rate(step, config, 30) for step in range(30)} == {2e-3}
