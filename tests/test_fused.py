"""The NumPy twins of the fused ops, each checked against a second, independent computation."""

import math

import numpy as np
import pytest

from mpipipe.fused import (
    adamw_update,
    cross_entropy_backward,
    cross_entropy_forward,
    gelu_backward,
    gelu_forward,
    layernorm_backward_input,
    layernorm_backward_weight,
    layernorm_forward,
)

import gradcheck

IGNORE = -100


def finite_difference(function, x, dy, step=1e-6):
    """d(sum(function(x) * dy))/dx by gradcheck's central differences, shaped like x."""
    numeric = gradcheck.finite_difference(
        lambda: np.sum(function(x) * dy), x, range(x.size), step
    )
    return numeric.reshape(x.shape)


def test_gelu_forward_matches_scalar_formula():
    x = np.linspace(-6, 6, 101)
    expected = [
        v / 2 * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) for v in x
    ]
    np.testing.assert_allclose(gelu_forward(x), expected, rtol=1e-13, atol=1e-15)


def test_gelu_forward_is_close_to_exact_gelu():
    x = np.linspace(-5, 5, 41)
    exact = [v / 2 * (1 + math.erf(v / math.sqrt(2))) for v in x]
    np.testing.assert_allclose(gelu_forward(x), exact, atol=1e-3)


def test_gelu_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7)) * 2
    dy = rng.normal(size=x.shape)
    numeric = finite_difference(gelu_forward, x, dy)
    np.testing.assert_allclose(gelu_backward(x, dy), numeric, rtol=1e-7, atol=1e-9)


def layernorm_reference(x, weight, bias, eps):
    """LayerNorm written the other way round: variance as E[x^2] - E[x]^2, per row in a loop."""
    out = np.empty_like(x)
    for index in np.ndindex(x.shape[:-1]):
        row = x[index]
        mean = sum(row) / len(row)
        variance = sum(v * v for v in row) / len(row) - mean * mean
        out[index] = (row - mean) / math.sqrt(variance + eps) * weight + bias
    return out


def layernorm_inputs(rng, dtype=np.float64):
    x = (rng.normal(size=(2, 3, 8)) * 3 + 1).astype(dtype)
    weight = rng.normal(size=8).astype(dtype)
    bias = rng.normal(size=8).astype(dtype)
    return x, weight, bias


def test_layernorm_forward_matches_reference():
    x, weight, bias = layernorm_inputs(np.random.default_rng(1))
    y, mean, rstd = layernorm_forward(x, weight, bias, eps=1e-5)
    np.testing.assert_allclose(y, layernorm_reference(x, weight, bias, 1e-5), rtol=1e-10)
    np.testing.assert_allclose(mean, x.mean(axis=-1), rtol=1e-12)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(x.var(axis=-1) + 1e-5), rtol=1e-12)


def test_layernorm_backward_matches_finite_differences():
    rng = np.random.default_rng(2)
    x, weight, bias = layernorm_inputs(rng)
    dy = rng.normal(size=x.shape)
    _, mean, rstd = layernorm_forward(x, weight, bias)

    dx = layernorm_backward_input(dy, x, weight, mean, rstd)
    dweight = np.full(8, 0.5)
    dbias = np.full(8, -0.25)
    layernorm_backward_weight(dy, x, mean, rstd, dweight, dbias)

    def by_x(values):
        return layernorm_forward(values, weight, bias)[0]

    def by_weight(values):
        return layernorm_forward(x, values, bias)[0]

    def by_bias(values):
        return layernorm_forward(x, weight, values)[0]

    np.testing.assert_allclose(dx, finite_difference(by_x, x, dy), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(
        dweight - 0.5, finite_difference(by_weight, weight, dy), rtol=1e-6, atol=1e-8
    )
    np.testing.assert_allclose(
        dbias + 0.25, finite_difference(by_bias, bias, dy), rtol=1e-6, atol=1e-8
    )


def log_softmax_reference(logits):
    """log softmax via log-sum-exp around the row minimum, in Python floats, row by row."""
    out = np.empty_like(logits, dtype=np.float64)
    for row in range(logits.shape[0]):
        low = min(logits[row])
        log_sum = low + math.log(math.fsum(math.exp(v - low) for v in logits[row]))
        out[row] = logits[row] - log_sum
    return out


def cross_entropy_inputs(rng, dtype=np.float64):
    logits = (rng.normal(size=(6, 11)) * 4).astype(dtype)
    targets = rng.integers(0, 11, size=6)
    targets[[1, 4]] = IGNORE
    return logits, targets


def test_cross_entropy_forward_matches_log_sum_exp():
    logits, targets = cross_entropy_inputs(np.random.default_rng(3))
    loss, probs = cross_entropy_forward(logits.copy(), targets, IGNORE, normalizer=7.0)
    log_probs = log_softmax_reference(logits)
    expected = -sum(log_probs[r, t] for r, t in enumerate(targets) if t != IGNORE) / 7.0
    assert loss.shape == ()
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(probs, np.exp(log_probs), rtol=1e-12)


def test_cross_entropy_backward_matches_finite_differences():
    rng = np.random.default_rng(4)
    logits, targets = cross_entropy_inputs(rng)
    _, probs = cross_entropy_forward(logits, targets, IGNORE, normalizer=5.0)
    dlogits = cross_entropy_backward(probs, targets, IGNORE, normalizer=5.0, dloss=1.5)

    def loss_of(values):
        return cross_entropy_forward(values, targets, IGNORE, normalizer=5.0)[0]

    numeric = finite_difference(loss_of, logits, 1.5)
    np.testing.assert_allclose(dlogits, numeric, rtol=1e-6, atol=1e-9)
    assert not dlogits[[1, 4]].any()


def test_cross_entropy_rejects_targets_outside_the_vocabulary():
    logits, targets = cross_entropy_inputs(np.random.default_rng(5))
    targets[2] = 11
    with pytest.raises(ValueError, match="target 11 at row 2"):
        cross_entropy_forward(logits, targets, IGNORE, normalizer=4.0)


def adamw_scalar(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, grad_scale):
    """The published AdamW rule (Loshchilov & Hutter, PyTorch form), one float at a time."""
    g = g * grad_scale
    p = p - lr * weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    return p - lr * m_hat / (math.sqrt(v_hat) + eps), m, v


def test_adamw_update_matches_scalar_rule_over_several_steps():
    rng = np.random.default_rng(6)
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    param = rng.normal(size=5)
    m = np.zeros(5)
    v = np.zeros(5)
    expected = [(p, 0.0, 0.0) for p in param]
    for step in range(1, 5):
        grad = rng.normal(size=5)
        adamw_update(param, grad, m, v, step=step, grad_scale=0.5, **hyper)
        expected = [
            adamw_scalar(p, g, mm, vv, step=step, grad_scale=0.5, **hyper)
            for (p, mm, vv), g in zip(expected, grad, strict=True)
        ]
    np.testing.assert_allclose(param, [e[0] for e in expected], rtol=1e-13)
    np.testing.assert_allclose(m, [e[1] for e in expected], rtol=1e-13)
    np.testing.assert_allclose(v, [e[2] for e in expected], rtol=1e-13)


def test_float32_twins_keep_dtype_and_match_float64():
    rng = np.random.default_rng(7)
    x, weight, bias = layernorm_inputs(rng)
    dy = rng.normal(size=x.shape)
    logits, targets = cross_entropy_inputs(rng)
    results = {}
    for dtype in (np.float32, np.float64):
        x_, w_, b_, dy_ = (a.astype(dtype) for a in (x, weight, bias, dy))
        y, mean, rstd = layernorm_forward(x_, w_, b_)
        dweight, dbias = np.zeros(8, dtype), np.zeros(8, dtype)
        layernorm_backward_weight(dy_, x_, mean, rstd, dweight, dbias)
        loss, probs = cross_entropy_forward(logits.astype(dtype), targets, IGNORE, 4.0)
        param, m, v = (np.linspace(-1, 1, 8, dtype=dtype) for _ in range(3))
        v = np.abs(v)
        adamw_update(param, dy_[0, 0], m, v, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8,
                     weight_decay=0.1, step=3, grad_scale=0.7)
        results[dtype] = {
            "gelu": gelu_forward(x_),
            "gelu_backward": gelu_backward(x_, dy_),
            "layernorm": y,
            "mean": mean,
            "rstd": rstd,
            "layernorm_backward_input": layernorm_backward_input(dy_, x_, w_, mean, rstd),
            "dweight": dweight,
            "dbias": dbias,
            "loss": loss,
            "cross_entropy_backward": cross_entropy_backward(probs, targets, IGNORE, 4.0),
            "param": param,
            "m": m,
            "v": v,
        }
    for name, single in results[np.float32].items():
        assert single.dtype == np.float32, name
        np.testing.assert_allclose(
            single, results[np.float64][name], rtol=2e-5, atol=2e-6, err_msg=name
        )
