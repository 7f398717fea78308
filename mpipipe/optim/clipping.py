"""Global-norm gradient clipping: the factor every gradient is multiplied by."""

from __future__ import annotations

# Keeps the coefficient finite when the norm is 0, as torch.nn.utils.clip_grad_norm_ does.
NORM_EPSILON = 1e-6


def clip_coefficient(total_norm: float, max_norm: float) -> float:
    """min(1, max_norm / (total_norm + 1e-6)); 1.0 when clipping is off (max_norm == 0).

    total_norm is the L2 norm of all gradients of the model (after the
    allreduce); the caller checks it for NaN/inf before calling (train.on_nan).
    """
    if max_norm < 0:
        raise ValueError(f"clip_coefficient: max_norm must be >= 0, got {max_norm}")
    if max_norm == 0:
        return 1.0
    return min(1.0, max_norm / (total_norm + NORM_EPSILON))
