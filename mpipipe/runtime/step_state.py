"""Everything one step of the engine holds, made fresh for every step and dropped after it.

A chunk is one (pipe, stage, micro-batch): its forward cache waits for its
backward (or I half), and the I half's result waits for the W half. The
receive buffers are the engine's, chosen once (runtime/receive_slots.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mpipipe.layers.base import MicroBatch
from mpipipe.runtime.memory_meter import CacheMeter
from mpipipe.runtime.receive_slots import ChunkKey
from mpipipe.schedules.lowering import Transfer


@dataclass
class StepState:
    step: int
    source: object  # the MicroBatchSource of this step's micro-batches
    contexts: dict[int, MicroBatch] = field(default_factory=dict)  # by micro-batch
    caches: dict[ChunkKey, object] = field(default_factory=dict)  # forward, awaiting backward
    weight_caches: dict[ChunkKey, object] = field(default_factory=dict)  # I half, awaiting W
    handovers: dict[Transfer, object] = field(default_factory=dict)  # between stages of a rank
    next_receive: int = 0  # index of the next receive of the engine's plan to start
    finished_receives: int = 0  # receives of the plan finished so far
    losses: list = field(default_factory=list)  # the last stage's loss shares
    compute_s: float = 0.0
    wait_s: float = 0.0
    first_start: float | None = None  # of the first op computed
    last_end: float | None = None  # of the last op computed
    peak: int = 0  # most caches (forward and I half) held at once
    memory: CacheMeter = field(default_factory=CacheMeter)  # their bytes

    def keep_cache(self, key: ChunkKey, cache) -> None:
        self.caches[key] = cache
        self.memory.keep(("forward", key), cache)
        self.peak = max(self.peak, len(self.caches) + len(self.weight_caches))

    def take_cache(self, key: ChunkKey):
        self.memory.drop(("forward", key))
        return self.caches.pop(key)

    def keep_weight_cache(self, key: ChunkKey, cache) -> None:
        self.weight_caches[key] = cache
        self.memory.keep(("weight", key), cache)
        self.peak = max(self.peak, len(self.caches) + len(self.weight_caches))

    def take_weight_cache(self, key: ChunkKey):
        self.memory.drop(("weight", key))
        return self.weight_caches.pop(key)

    def computed(self, start: float, end: float) -> None:
        """An op computed from `start` to `end`."""
        self.compute_s += end - start
        self.first_start = start if self.first_start is None else self.first_start
        self.last_end = end
