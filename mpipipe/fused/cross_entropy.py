"""Softmax cross-entropy over the vocabulary, with ignored targets.

loss = sum over rows whose target is not `ignore_index` of
-log softmax(logits)[target], divided by `normalizer` (the number of counted
targets in the whole global batch, so micro-batch losses add up to the
global mean). The forward keeps the probabilities; the backward turns them
into dlogits in place. 2-byte logits compute in float32: the loss and the
probabilities are float32, and the backward gives dlogits in the logits'
type (`dtype`).
"""

from __future__ import annotations

import numpy as np

from mpipipe.fused import cuda
from mpipipe.precision import is_low, stats_dtype


def cross_entropy_forward(logits2d, targets1d, ignore_index: int, normalizer: float):
    """Return (loss as a 0-d array, probs); logits2d: (R, V), targets1d: (R,) integers."""
    _check_shapes(logits2d, targets1d, normalizer)
    if cuda.on_gpu(logits2d):
        return cuda.cross_entropy_forward(logits2d, targets1d, ignore_index, normalizer)
    if is_low(logits2d.dtype):
        logits2d = logits2d.astype(np.float32)
    vocab = logits2d.shape[1]
    counted = targets1d != ignore_index
    outside = counted & ((targets1d < 0) | (targets1d >= vocab))
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        # The data checks its ids against the model's vocabulary when it is opened.
        raise ValueError(
            f"cross-entropy: target {int(targets1d[row])} at row {row} is outside the "
            f"vocabulary [0, {vocab}) and is not ignore_index={ignore_index}"
        )
    probs = logits2d - logits2d.max(axis=1, keepdims=True)
    rows = np.flatnonzero(counted)
    target_logits = probs[rows, targets1d[rows]]
    np.exp(probs, out=probs)
    row_sums = probs.sum(axis=1, dtype=np.float64)
    probs /= row_sums.astype(logits2d.dtype)[:, None]
    # -log softmax[target] = log(sum exp(shifted)) - shifted[target]
    loss = np.sum(np.log(row_sums[rows]) - target_logits, dtype=np.float64) / normalizer
    return np.asarray(loss, dtype=logits2d.dtype), probs


def cross_entropy_backward(probs2d, targets1d, ignore_index: int, normalizer: float, dloss=1.0,
                           dtype=None):
    """dlogits = (probs - onehot(target)) * dloss / normalizer; 0 on ignored rows.

    `dtype` is the logits' type (default the probabilities'). Overwrites `probs2d`; returns
    it, or its rounding to a 2-byte `dtype`.
    """
    _check_shapes(probs2d, targets1d, normalizer)
    dtype = probs2d.dtype if dtype is None else np.dtype(dtype)
    assert stats_dtype(dtype) == probs2d.dtype, (dtype, probs2d.dtype)
    if cuda.on_gpu(probs2d):
        return cuda.cross_entropy_backward(probs2d, targets1d, ignore_index, normalizer, dloss,
                                           dtype)
    counted = targets1d != ignore_index
    rows = np.flatnonzero(counted)
    probs2d[rows, targets1d[rows]] -= 1.0
    probs2d[~counted] = 0.0
    probs2d *= float(dloss) / normalizer
    return probs2d if dtype == probs2d.dtype else probs2d.astype(dtype)


def _check_shapes(matrix, targets1d, normalizer: float) -> None:
    if matrix.ndim != 2 or targets1d.ndim != 1 or targets1d.shape[0] != matrix.shape[0]:
        raise ValueError(
            f"cross-entropy needs (R, V) logits and (R,) targets, got {tuple(matrix.shape)} "
            f"and {tuple(targets1d.shape)}"
        )
    if not normalizer > 0:
        raise ValueError(f"cross-entropy normalizer must be positive, got {normalizer}")
