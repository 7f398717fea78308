"""LayerNorm over the last axis: y = (x - mean) * rstd * weight + bias.

Forward keeps `mean` and `rstd` (shape x.shape[:-1]) for the backward, as
llm.c does. The backward is split like every layer's: the input half
returns dx, the weight half accumulates into dweight and dbias. The NumPy
twin works in the input's own precision (NumPy sums rows pairwise, which
keeps float32 accurate) and in place on as few temporaries as it can:
LayerNorm is memory-bound. A 2-byte x (with its 2-byte weight and bias)
computes in float32: mean and rstd stay float32, y and dx are rounded back,
and the weight gradients add into the float32 master gradients.
"""

from __future__ import annotations

import numpy as np

from mpipipe.fused import cuda
from mpipipe.precision import is_low


def _as_float32(*arrays):
    return [array.astype(np.float32) for array in arrays]


def _row_dot(a, b):
    """sum(a * b) over the last axis, without an (..., C) temporary."""
    return np.einsum("...c,...c->...", a, b)


def layernorm_forward(x, weight, bias, eps: float = 1e-5):
    """Return (y, mean, rstd); x: (..., C), weight and bias: (C,)."""
    if cuda.on_gpu(x):
        return cuda.layernorm_forward(x, weight, bias, eps)
    if is_low(x.dtype):
        y, mean, rstd = layernorm_forward(*_as_float32(x, weight, bias), eps)
        return y.astype(x.dtype), mean, rstd
    channels = x.shape[-1]
    mean = x.mean(axis=-1)
    y = x - mean[..., None]
    variance = _row_dot(y, y)
    variance /= channels
    variance += eps
    rstd = np.reciprocal(np.sqrt(variance, out=variance), out=variance)
    y *= rstd[..., None]
    y *= weight
    y += bias
    return y, mean, rstd


def _normalised(x, mean, rstd):
    xhat = x - mean[..., None]
    xhat *= rstd[..., None]
    return xhat


def layernorm_backward_input(dy, x, weight, mean, rstd):
    """dx from dy and the forward's x, mean and rstd."""
    if cuda.on_gpu(x):
        return cuda.layernorm_backward_input(dy, x, weight, mean, rstd)
    if is_low(x.dtype):
        return layernorm_backward_input(*_as_float32(dy, x, weight), mean, rstd).astype(x.dtype)
    channels = x.shape[-1]
    xhat = _normalised(x, mean, rstd)
    dxhat = dy * weight
    mean_dxhat = dxhat.mean(axis=-1)
    mean_dxhat_xhat = _row_dot(dxhat, xhat)
    mean_dxhat_xhat /= channels
    # dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) * rstd
    xhat *= mean_dxhat_xhat[..., None]
    dxhat -= mean_dxhat[..., None]
    dxhat -= xhat
    dxhat *= rstd[..., None]
    return dxhat


def layernorm_backward_weight(dy, x, mean, rstd, dweight, dbias) -> None:
    """dweight += sum over rows of dy * xhat; dbias += sum over rows of dy."""
    if cuda.on_gpu(x):
        cuda.layernorm_backward_weight(dy, x, mean, rstd, dweight, dbias)
        return
    if is_low(x.dtype):
        dy, x = _as_float32(dy, x)
    channels = x.shape[-1]
    xhat = _normalised(x, mean, rstd).reshape(-1, channels)
    dy_rows = dy.reshape(-1, channels)
    dweight += np.einsum("nc,nc->c", dy_rows, xhat)
    dbias += dy_rows.sum(axis=0)
