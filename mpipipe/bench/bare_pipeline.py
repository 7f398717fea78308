"""The emulated benchmark's floor: the same schedule run by the smallest MPI loop.

This rank's ops of the schedule in order, each op's cost queued on the same
emulated device (the host polling MPI while it waits, as the engine's does),
each receive started while the op before the one needing it computes, into
the most recently freed of a few buffers (nothing reads the data), each send
one `Isend` of a fixed array; waits spin on `Test`. No watchdog, timeline,
caches, statistics, gradient sync or optimizer: nothing but the schedule's
messages and compute. Measured beside the engine in the same run, the gap
between the two windows is what the engine itself adds; what this loop needs
beyond the simulator's makespan is MPI's and the machine's (on a CPU, the
receiving core copies every message).
"""

from __future__ import annotations

import os
import statistics

import numpy as np
from mpi4py import MPI

from mpipipe.bench.emulated_device import EmulatedAccelerator
from mpipipe.runtime.timeline import rank0_clock_offset
from mpipipe.schedules.lowering import lower
from mpipipe.schedules.ops import OpType
from mpipipe.schedules.simulate import OpCosts

_yield_core = getattr(os, "sched_yield", lambda: None)


class BarePipeline:
    """One rank's part of the loop; `window_seconds` runs steps (collective over `comm`)."""

    def __init__(self, comm, plan, costs: OpCosts, device: EmulatedAccelerator):
        self.comm = comm
        self.device = device
        grid = plan.grid
        shapes = plan.model.boundary_shapes(plan.stage_layers, plan.config.data.microbatch_size)
        self.ops = [item for item in lower(plan.schedule, grid.pipe_rank)
                    if item.op.type is not OpType.SYNC]
        self.costs = [costs.duration(item.op) for item in self.ops]
        self.receives = [  # (op index, peer, tag, shape) of every message, in op order
            (index, grid.world_rank_of(item.receive.peer), item.receive.tag,
             shapes[item.receive.boundary])
            for index, item in enumerate(self.ops)
            if item.receive is not None and item.receive.peer is not None
        ]
        self.sends = [
            None if item.send is None or item.send.peer is None
            else (grid.world_rank_of(item.send.peer), item.send.tag,
                  np.ones(shapes[item.send.boundary], dtype=np.float32))
            for item in self.ops
        ]
        self.free: dict[tuple, list] = {}
        self.clock_offset = rank0_clock_offset(comm)

    def _buffer(self, shape):
        free = self.free.setdefault(shape, [])
        return free.pop() if free else np.empty(shape, dtype=np.float32)

    def step(self) -> tuple[float, float]:
        """One step: (first op start, last op end) on rank 0's clock."""
        posted: dict[int, tuple] = {}  # op index -> (request, buffer)
        in_flight: list = []  # sends, oldest first
        next_receive = 0

        def start_receives(upto: int) -> None:
            nonlocal next_receive
            while next_receive < len(self.receives) and self.receives[next_receive][0] <= upto:
                index, peer, tag, shape = self.receives[next_receive]
                buffer = self._buffer(shape)
                posted[index] = (self.comm.Irecv(buffer, source=peer, tag=tag), buffer)
                next_receive += 1

        def poll() -> None:
            while in_flight and in_flight[0].Test():
                in_flight.pop(0)
            if not in_flight and posted:
                next(iter(posted.values()))[0].Test()

        start_receives(0)
        first = last = 0.0
        for index, seconds in enumerate(self.costs):
            pending = posted.pop(index, None)
            if pending is not None:
                request, buffer = pending
                while not request.Test():
                    _yield_core()
                self.free[buffer.shape].append(buffer)
            start = MPI.Wtime()
            if index == 0:
                first = start
            self.device.enqueue(seconds)
            start_receives(index + 1)
            poll()
            self.device.synchronize(while_waiting=poll)
            last = MPI.Wtime()
            send = self.sends[index]
            if send is not None:
                peer, tag, array = send
                in_flight.append(self.comm.Isend(array, dest=peer, tag=tag))
        MPI.Request.Waitall(in_flight)
        return first + self.clock_offset, last + self.clock_offset

    def window_seconds(self, warmup: int, steps: int) -> float:
        """Median over `steps` steps (after `warmup`) of first op start to last op end over
        the ranks; every rank gets it."""
        windows = []
        for step in range(warmup + steps):
            self.comm.Barrier()
            first, last = self.step()
            begin = self.comm.allreduce(first, op=MPI.MIN)
            end = self.comm.allreduce(last, op=MPI.MAX)
            if step >= warmup:
                windows.append(end - begin)
        return statistics.median(windows)
