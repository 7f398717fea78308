"""GELU, GPT-2's tanh approximation: y = x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))).

A 2-byte input computes in float32 and is rounded back (mpipipe.precision).
"""

from __future__ import annotations

import math

import numpy as np

from mpipipe.fused import cuda
from mpipipe.precision import is_low

GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


def _tanh_inner(x, squared):
    """tanh(sqrt(2/pi) * (x + 0.044715 x^3)), given squared = x * x."""
    inner = squared * GELU_CUBIC
    inner += 1.0
    inner *= x
    inner *= GELU_SCALE
    return np.tanh(inner, out=inner)


def gelu_forward(x):
    """y = gelu(x), same shape and dtype as x."""
    if cuda.on_gpu(x):
        return cuda.gelu_forward(x)
    if is_low(x.dtype):
        return gelu_forward(x.astype(np.float32)).astype(x.dtype)
    # In place on one temporary: the element-wise work dominates GELU's cost.
    y = _tanh_inner(x, x * x)
    y += 1.0
    y *= x
    y *= 0.5
    return y


def gelu_backward(x, dy):
    """dx = dy * gelu'(x), where x is the forward input."""
    if cuda.on_gpu(x):
        return cuda.gelu_backward(x, dy)
    if is_low(x.dtype):
        return gelu_backward(x.astype(np.float32), dy.astype(np.float32)).astype(x.dtype)
    squared = x * x
    tanh_inner = _tanh_inner(x, squared)
    # slope = 0.5 (1 + t) + 0.5 x (1 - t^2) * sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    squared *= 3.0 * GELU_CUBIC
    squared += 1.0
    squared *= x
    squared *= 0.5 * GELU_SCALE
    slope = tanh_inner * tanh_inner
    np.subtract(1.0, slope, out=slope)
    slope *= squared
    tanh_inner += 1.0
    tanh_inner *= 0.5
    slope += tanh_inner
    slope *= dy
    return slope
