"""An emulated accelerator: work is queued and takes its time; the host waits in `synchronize`.

Like a GPU stream, an op returns at once and the device stays busy for the
op's cost; the engine's `backend.synchronize(while_waiting=...)` (which it
calls after every op, as it must before timing or sending) is where the host
waits, idle but for polling MPI, as it does on a GPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mpipipe.backend import Backend
from mpipipe.layers.base import MicroBatch
from mpipipe.runtime.watchdog import precise_sleeps
from mpipipe.schedules.simulate import OpCosts

# How often the waiting host lets MPI progress: often enough that a message's copy starts
# soon after it arrives, as the GPU backend's polls every DEVICE_POLL_S (plus a wake-up).
PROGRESS_POLL_S = 5e-5


class Sleeper:
    """`sleep(seconds)` that lasts `seconds` and barely more.

    time.sleep overshoots by a roughly constant wake-up delay; it is measured
    once and taken off, and a sleep that comes back early spins out the rest.
    """

    def __init__(self, probes: int = 20, probe_s: float = 1e-3):
        overshoots = []
        for _ in range(probes):
            start = time.perf_counter()
            time.sleep(probe_s)
            overshoots.append(time.perf_counter() - start - probe_s)
        self.overshoot_s = max(0.0, statistics.median(overshoots))

    def sleep_until(self, deadline: float) -> None:
        remaining = deadline - time.perf_counter() - self.overshoot_s
        if remaining > 0:
            time.sleep(remaining)
        # Spin out the last stretch only when the sleep came back early.
        while time.perf_counter() < deadline:
            pass


@dataclass
class EmulatedAccelerator(Backend):
    """A NumPy backend whose `synchronize` waits for the queued emulated work."""

    sleeper: Sleeper = field(default_factory=Sleeper)
    busy_until: float = 0.0

    def enqueue(self, seconds: float) -> None:
        self.busy_until = max(self.busy_until, time.perf_counter()) + seconds

    def synchronize(self, while_waiting: Callable[[], object] | None = None) -> None:
        """Wait for the queued work; with `while_waiting`, call it every PROGRESS_POLL_S
        meanwhile."""
        if while_waiting is None:
            self.sleeper.sleep_until(self.busy_until)
            return
        while time.perf_counter() < self.busy_until:
            while_waiting()
            self.sleeper.sleep_until(min(self.busy_until, time.perf_counter() + PROGRESS_POLL_S))


def emulated_accelerator() -> EmulatedAccelerator:
    precise_sleeps()  # as the engine's watchdog will, before the sleeper measures its overshoot
    return EmulatedAccelerator(xp=np, dtype=np.float32, device="cpu")


class QueuedCompute:
    """A StageCompute whose ops queue their cost on the device and return arrays of the real
    shapes."""

    def __init__(self, device: EmulatedAccelerator, costs: OpCosts, output, input_gradient):
        self.device = device
        self.costs = costs
        self.output = output  # the last stage's is the 0-d loss
        self.input_gradient = input_gradient

    def forward(self, x, ctx: MicroBatch):
        self.device.enqueue(self.costs.forward)
        return self.output, None

    def backward(self, dy, cache):
        self.device.enqueue(self.costs.backward)
        return self.input_gradient

    def backward_input(self, dy, cache):
        self.device.enqueue(self.costs.backward_input)
        return self.input_gradient, None

    def backward_weight(self, weight_cache) -> None:
        self.device.enqueue(self.costs.backward_weight)
