"""LayerNorm over the last axis: y = (x - mean) * rstd * weight + bias.

Forward keeps `mean` and `rstd` (shape x.shape[:-1]) for the backward, as
llm.c does. The backward is split like every layer's: the input half
returns dx, the weight half accumulates into dweight and dbias.
Row reductions of float32 inputs are accumulated in float64.
"""

from __future__ import annotations

import numpy as np

from mpipipe.fused import cuda


def layernorm_forward(x, weight, bias, eps: float = 1e-5):
    """Return (y, mean, rstd); x: (..., C), weight and bias: (C,)."""
    if cuda.on_gpu(x):
        return cuda.layernorm_forward(x, weight, bias, eps)
    mean = x.mean(axis=-1, dtype=np.float64).astype(x.dtype)
    centered = x - mean[..., None]
    variance = np.mean(centered * centered, axis=-1, dtype=np.float64)
    rstd = (1.0 / np.sqrt(variance + eps)).astype(x.dtype)
    y = centered * rstd[..., None] * weight + bias
    return y, mean, rstd


def layernorm_backward_input(dy, x, weight, mean, rstd):
    """dx from dy and the forward's x, mean and rstd."""
    if cuda.on_gpu(x):
        return cuda.layernorm_backward_input(dy, x, weight, mean, rstd)
    xhat = (x - mean[..., None]) * rstd[..., None]
    dxhat = dy * weight
    mean_dxhat = dxhat.mean(axis=-1, dtype=np.float64).astype(x.dtype)
    mean_dxhat_xhat = np.mean(dxhat * xhat, axis=-1, dtype=np.float64).astype(x.dtype)
    return (dxhat - mean_dxhat[..., None] - xhat * mean_dxhat_xhat[..., None]) * rstd[..., None]


def layernorm_backward_weight(dy, x, mean, rstd, dweight, dbias) -> None:
    """dweight += sum over rows of dy * xhat; dbias += sum over rows of dy."""
    if cuda.on_gpu(x):
        cuda.layernorm_backward_weight(dy, x, mean, rstd, dweight, dbias)
        return
    channels = x.shape[-1]
    xhat = (x - mean[..., None]) * rstd[..., None]
    dweight += np.sum((dy * xhat).reshape(-1, channels), axis=0, dtype=np.float64)
    dbias += np.sum(dy.reshape(-1, channels), axis=0, dtype=np.float64)
