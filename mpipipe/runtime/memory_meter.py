"""Memory one rank measures in a step, for metrics.jsonl's memory fields.

The activation caches are counted from the arrays themselves
(`layers.memory.live_bytes`) once, when a cache is kept, and subtracted when
it is dropped, so the most held at once costs one walk of each cache, not a
walk of everything per op. On a GPU the CuPy pool's bytes in use are read
at the same moments (and at the end of the step): the peak seen between
ops, which misses only what an op allocates and frees within itself.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable, Hashable

from mpipipe.layers.memory import live_bytes


class CacheMeter:
    """Bytes of the caches held now, and the most held at once this step."""

    def __init__(self, device_in_use: Callable[[], int] | None = None):
        self.device_in_use = device_in_use  # the GPU pool's bytes in use; None on a CPU
        self.held = 0
        self.peak = 0
        self.device_peak = 0
        self._sizes: dict[Hashable, int] = {}

    def keep(self, key: Hashable, cache) -> None:
        size = live_bytes(cache)
        self._sizes[key] = size
        self.held += size
        self.peak = max(self.peak, self.held)
        self.sample_device()

    def drop(self, key: Hashable) -> None:
        self.held -= self._sizes.pop(key)

    def sample_device(self) -> None:
        if self.device_in_use is not None:
            self.device_peak = max(self.device_peak, self.device_in_use())


def peak_rss_bytes() -> int:
    """The process's largest resident set so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
