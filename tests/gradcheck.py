"""Central finite differences, the independent reference for every gradient test."""

from __future__ import annotations

import numpy as np


def finite_difference(objective, array: np.ndarray, indices, step: float) -> np.ndarray:
    """d objective() / d array.flat[i] for i in `indices`, perturbing `array` in place."""
    flat = array.reshape(-1)
    estimates = np.empty(len(indices))
    for position, index in enumerate(indices):
        saved = flat[index]
        flat[index] = saved + step
        plus = objective()
        flat[index] = saved - step
        minus = objective()
        flat[index] = saved
        estimates[position] = (plus - minus) / (2 * step)
    return estimates
