"""What one step reports: each rank's row of numbers, and their sum over ranks.

After its last op every rank contributes one row (its loss share, squared
gradient norm of the buckets it owns, whether any gradient it holds is not
finite, timings, peak, measured memory, whether it was asked to stop); a single allgather of
the rows gives every rank the same `StepStats`. The overflow flag is how
fp16's loss scaling learns, on every rank alike, that some rank's
gradients overflowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

(_LOSS, _SQUARED_NORM, _FIRST_START, _LAST_END, _COMPUTE, _WAIT, _PEAK, _STOP, _OVERFLOW,
 _MEMORY, _ACTIVATION_BYTES, _RSS) = range(12)
COLUMNS = 12


def stats_row(
    *, loss: float, squared_norm: float, first_start: float, last_end: float, compute_s: float,
    wait_s: float, peak: int, stop_asked: bool, overflow: bool = False, memory_bytes: int = 0,
    activation_bytes: int = 0, rss_bytes: int = 0,
) -> np.ndarray:
    """One rank's contribution to the step's statistics."""
    row = np.zeros(COLUMNS)
    row[_LOSS] = loss
    row[_SQUARED_NORM] = squared_norm
    row[_OVERFLOW] = float(overflow)
    row[_FIRST_START] = first_start
    row[_LAST_END] = last_end
    row[_COMPUTE] = compute_s
    row[_WAIT] = wait_s
    row[_PEAK] = peak
    row[_STOP] = float(stop_asked)
    row[_MEMORY] = memory_bytes
    row[_ACTIVATION_BYTES] = activation_bytes
    row[_RSS] = rss_bytes
    return row


@dataclass
class StepStats:
    """The outcome of one forward-backward step, identical on every rank."""

    loss: float  # mean over the global batch
    grad_norm: float  # global L2 norm of the gradient, before clipping
    window_s: float  # first op start to last op end, over all ranks
    compute_s: list[float]  # per rank: time inside F, B, I, W ops
    wait_s: list[float]  # per rank: time blocked on messages and syncs
    peak_activations: list[int]  # per rank: most micro-batch caches held at once
    stop_asked_on_some_rank: bool = False  # some rank was asked to stop during the step
    overflow: bool = False  # some rank holds a gradient that is not finite
    # Per rank, measured (runtime/memory_meter.py): the peak of what the rank holds (CPU:
    # parameters, gradients, optimizer state, caches and receive buffers; GPU: CuPy's pool),
    # the peak bytes of its activation caches, and the process's peak resident set.
    memory_bytes: list[int] = field(default_factory=list)
    activation_bytes: list[int] = field(default_factory=list)
    rss_bytes: list[int] = field(default_factory=list)

    @classmethod
    def from_rows(cls, table: np.ndarray) -> StepStats:
        """Combine every rank's `stats_row` (one row per rank)."""
        # One conversion to Python lists: a dozen small NumPy reductions cost more than the
        # arithmetic, and this runs at the end of every step on the rank that finishes last.
        # The two sums stay NumPy's, whose order of addition the loss and the clipping's
        # norm have always had.
        columns = table.T.tolist()
        return cls(
            loss=float(table[:, _LOSS].sum()),
            grad_norm=math.sqrt(max(0.0, float(table[:, _SQUARED_NORM].sum())))
            if all(math.isfinite(value) for value in columns[_SQUARED_NORM])
            else math.nan,
            window_s=max(columns[_LAST_END]) - min(columns[_FIRST_START]),
            compute_s=columns[_COMPUTE],
            wait_s=columns[_WAIT],
            peak_activations=[int(value) for value in columns[_PEAK]],
            stop_asked_on_some_rank=any(columns[_STOP]),
            overflow=any(columns[_OVERFLOW]),
            memory_bytes=[int(value) for value in columns[_MEMORY]],
            activation_bytes=[int(value) for value in columns[_ACTIVATION_BYTES]],
            rss_bytes=[int(value) for value in columns[_RSS]],
        )

    @property
    def bubble(self) -> list[float]:
        """Per rank: the fraction of the step window it spent not computing."""
        if self.window_s <= 0:
            return [0.0 for _ in self.compute_s]
        return [max(0.0, 1.0 - busy / self.window_s) for busy in self.compute_s]

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)
