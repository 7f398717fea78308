"""One fused AdamW step on flat arrays, with PyTorch's semantics.

    g  = grad * grad_scale                      (global-norm clipping coefficient)
    p -= lr * weight_decay * p                  (decoupled decay)
    m  = beta1 * m + (1 - beta1) * g
    v  = beta2 * v + (1 - beta2) * g^2
    p -= lr * (m / (1 - beta1^step)) / (sqrt(v / (1 - beta2^step)) + eps)
"""

from __future__ import annotations

import math

import numpy as np

from mpipipe.fused import cuda


def adamw_update(
    param,
    grad,
    m,
    v,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    grad_scale: float = 1.0,
) -> None:
    """Update param, m and v in place; step counts from 1."""
    if step < 1:
        raise ValueError(f"adamw_update: step counts from 1, got {step}")
    if not param.shape == grad.shape == m.shape == v.shape:
        raise ValueError(
            f"adamw_update: param, grad, m and v must have one shape, got {param.shape}, "
            f"{grad.shape}, {m.shape}, {v.shape}"
        )
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    if cuda.on_gpu(param):
        cuda.adamw_update(
            param, grad, m, v, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
            weight_decay=weight_decay, grad_scale=grad_scale,
            bias_correction1=bias_correction1, bias_correction2=bias_correction2,
        )
        return
    scaled_grad = grad * grad_scale
    m *= beta1
    m += (1.0 - beta1) * scaled_grad
    v *= beta2
    scaled_grad *= scaled_grad
    v += (1.0 - beta2) * scaled_grad
    param *= 1.0 - lr * weight_decay
    denominator = np.sqrt(v)
    denominator /= math.sqrt(bias_correction2)
    denominator += eps
    param -= (lr / bias_correction1) * m / denominator
