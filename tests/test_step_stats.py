"""The step's statistics combine every rank's row as NumPy would over the table."""

import math

import numpy as np

from mpipipe.runtime.step_stats import StepStats, stats_row


def _rows(norms, stops=(False, False, False), overflows=(False, False, False)):
    return np.stack([
        stats_row(loss=0.25 * (rank + 1), squared_norm=norm, first_start=10.0 + rank,
                  last_end=20.0 + 3 * rank, compute_s=1.5 * rank, wait_s=0.5 + rank,
                  peak=rank + 2, stop_asked=stop, overflow=overflow,
                  memory_bytes=1000 * rank, activation_bytes=10 * rank, rss_bytes=7 + rank)
        for rank, (norm, stop, overflow) in enumerate(zip(norms, stops, overflows, strict=True))
    ])


def test_rows_combine_into_the_sums_maxima_and_flags_of_the_table():
    table = _rows([1.0, 4.0, 11.0])
    stats = StepStats.from_rows(table)
    assert stats.loss == float(table[:, 0].sum())  # NumPy's sum, bit for bit
    assert stats.grad_norm == math.sqrt(float(table[:, 1].sum()))
    assert stats.window_s == 26.0 - 10.0
    assert stats.compute_s == [0.0, 1.5, 3.0] and stats.wait_s == [0.5, 1.5, 2.5]
    assert stats.peak_activations == [2, 3, 4]
    assert stats.memory_bytes == [0, 1000, 2000] and stats.activation_bytes == [0, 10, 20]
    assert stats.rss_bytes == [7, 8, 9]
    assert not stats.stop_asked_on_some_rank and not stats.overflow and stats.finite


def test_one_ranks_flag_or_non_finite_norm_reaches_the_whole_step():
    stats = StepStats.from_rows(_rows([1.0, math.inf, 1.0], stops=(False, True, False),
                                      overflows=(False, False, True)))
    assert math.isnan(stats.grad_norm) and not stats.finite
    assert stats.stop_asked_on_some_rank and stats.overflow
