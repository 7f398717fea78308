"""GELU, GPT-2's tanh approximation: y = x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))."""

from __future__ import annotations

import math

import numpy as np

from mpipipe.fused import cuda

GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


def gelu_forward(x):
    """y = gelu(x), same shape and dtype as x."""
    if cuda.on_gpu(x):
        return cuda.gelu_forward(x)
    inner = GELU_SCALE * (x + GELU_CUBIC * x * x * x)
    return 0.5 * x * (1.0 + np.tanh(inner))


def gelu_backward(x, dy):
    """dx = dy * gelu'(x), where x is the forward input."""
    if cuda.on_gpu(x):
        return cuda.gelu_backward(x, dy)
    tanh_inner = np.tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x))
    dinner = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x)
    slope = 0.5 * (1.0 + tanh_inner) + 0.5 * x * (1.0 - tanh_inner * tanh_inner) * dinner
    return dy * slope
