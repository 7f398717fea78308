"""The pipeline engine: run this rank's ops of a schedule for one step.

For each op in order: an F takes its input (the tokens, a local hand-over
or a pre-posted receive), runs the stage forward, keeps the cache and sends
its output on; a B (or I, then W) does the same backwards and frees the
cache; a SYNC starts the non-blocking gradient allreduce of every bucket
whose last user on this rank that chunk is. After the last op the rank
waits for its sends and syncs, then one `Allgather` of a few numbers gives
every rank the global loss, the gradient norm and the timing of every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from mpipipe.comm import Messenger
from mpipipe.errors import UsageError
from mpipipe.layers.base import MicroBatch
from mpipipe.runtime.faults import FaultInjector
from mpipipe.runtime.stage import StageCompute
from mpipipe.runtime.timeline import Timeline
from mpipipe.runtime.watchdog import WaitInfo, Watchdog
from mpipipe.schedules.lowering import LoweredOp, Transfer, lower, max_tag
from mpipipe.schedules.ops import OpType

# What one rank reports at the end of a step (one row of the Allgather).
_LOSS, _SQUARED_NORM, _FIRST_START, _LAST_END, _COMPUTE, _WAIT, _PEAK, _STOP = range(8)
_COLUMNS = 8


@dataclass(frozen=True)
class _PlannedReceive:
    """A message this rank receives every step, with what the watchdog says while waiting."""

    position: int  # of the op that needs it
    shape: tuple
    peer: int  # world rank of the sender
    tag: int
    info: WaitInfo


@dataclass
class StepStats:
    """The outcome of one forward-backward step, identical on every rank."""

    loss: float  # mean over the global batch
    grad_norm: float  # global L2 norm of the gradient, before clipping
    window_s: float  # first op start to last op end, over all ranks
    compute_s: list[float]  # per rank: time inside F, B, I, W ops
    wait_s: list[float]  # per rank: time blocked on messages and syncs
    peak_activations: list[int]  # per rank: most micro-batch caches held at once
    stop_requested: bool = False  # some rank was asked to stop (SIGTERM) during the step

    @property
    def bubble(self) -> list[float]:
        """Per rank: the fraction of the step window it spent not computing."""
        if self.window_s <= 0:
            return [0.0 for _ in self.compute_s]
        return [max(0.0, 1.0 - busy / self.window_s) for busy in self.compute_s]

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


class Engine:
    def __init__(
        self,
        *,
        comm,
        grid,
        schedule,
        model,
        stage_layers: list[range],
        store,
        backend,
        batcher,
        microbatch_size: int,
        watchdog: Watchdog,
        timeline: Timeline,
        cuda_aware: bool = False,
        recv_window: int = 8,
        compute_factory=None,
        faults: FaultInjector | None = None,
    ):
        self.comm = comm
        self.grid = grid
        self.schedule = schedule
        self.store = store
        self.backend = backend
        self.batcher = batcher
        self.watchdog = watchdog
        self.timeline = timeline
        self.recv_window = recv_window
        self.faults = faults or FaultInjector(comm.Get_rank(), text="")
        # Set from a signal handler; every rank learns of it with the step's statistics.
        self.stop_requested = False
        self.last_stage = schedule.stages - 1
        self.lowered: list[LoweredOp] = lower(schedule, grid.pipe_rank)
        self.messenger = Messenger(comm, backend, cuda_aware, watchdog)
        self.boundary_shapes = _boundary_shapes(model, stage_layers, microbatch_size)
        self._check_tags()
        my_stages = sorted({stage for _, stage in schedule.placement.chunks_on(grid.pipe_rank)})
        make_compute = compute_factory or (
            lambda stage, indices: StageCompute(model.layers, indices, store)
        )
        self.stages = {stage: make_compute(stage, stage_layers[stage]) for stage in my_stages}
        self._create_sync_communicators()
        self.launches = self._plan_sync_launches()
        self.labels = [str(lowered.op) for lowered in self.lowered]
        self.receive_plan = self._plan_receives()
        self.upstream_gradient_of_loss = backend.xp.asarray(1.0, dtype=backend.dtype)

    # ----- set-up -------------------------------------------------------------

    def _check_tags(self) -> None:
        tag_limit = self.comm.Get_attr(MPI.TAG_UB)
        needed = max_tag(self.schedule)
        if tag_limit is not None and needed > tag_limit:
            raise UsageError(
                f"this schedule needs MPI message tags up to {needed} but the MPI library allows "
                f"{tag_limit}: use fewer parallel.microbatches or pipeline stages"
            )

    def _create_sync_communicators(self) -> None:
        """One communicator per bucket, made by its members only, in the global bucket order."""
        world_group = self.comm.Get_group()
        for bucket in self.store.buckets:
            if len(bucket.world_members) == 1:
                continue
            group = world_group.Incl(bucket.world_members)
            bucket.comm = self.comm.Create_group(group, tag=bucket.index)
            group.Free()
        world_group.Free()

    def _plan_receives(self) -> list[_PlannedReceive]:
        """Every message this rank receives in a step, in the order its ops need them."""
        itemsize = np.dtype(self.backend.dtype).itemsize
        plan = []
        for position, lowered in enumerate(self.lowered):
            transfer = lowered.receive
            if transfer is None or transfer.peer is None:
                continue
            peer = self.grid.world_rank_of(transfer.peer)
            shape = self.boundary_shapes[transfer.boundary]
            nbytes = int(np.prod(shape)) * itemsize
            info = WaitInfo(transfer.direction, self.labels[position], peer, transfer.tag, nbytes)
            plan.append(_PlannedReceive(position, shape, peer, transfer.tag, info))
        return plan

    def _plan_sync_launches(self) -> dict[int | None, list]:
        """At which op position each bucket's allreduce starts (None: after the last op)."""
        last_sync_of_stage = {
            lowered.op.stage: position
            for position, lowered in enumerate(self.lowered)
            if lowered.op.type is OpType.SYNC
        }
        launches: dict[int | None, list] = {}
        for bucket in self.store.buckets:
            if bucket.comm is None:
                continue
            positions = [last_sync_of_stage.get(stage) for stage in bucket.stages]
            mine = [position for position in positions if position is not None]
            held = [stage for stage in bucket.stages if stage in self.stages]
            launch = max(mine) if len(mine) == len(held) and mine else None
            launches.setdefault(launch, []).append(bucket)
        return launches

    # ----- one step -----------------------------------------------------------

    def forward_backward(self, step: int) -> StepStats:
        """Run this rank's ops for `step`; gradients are summed over all holders afterwards."""
        self.watchdog.step = step
        self.timeline.begin_step(step)
        self.store.zero_grads()
        self._step = step
        self._contexts: dict[int, MicroBatch] = {}
        self._caches: dict[tuple, object] = {}
        self._weight_caches: dict[tuple, object] = {}
        self._held_buffers: dict[tuple, list] = {}
        self._handovers: dict[Transfer, object] = {}  # a hand-over's send equals its receive
        self._posted: dict[int, object] = {}
        self._next_receive = 0
        self._losses = []
        self._compute_s = self._wait_s = 0.0
        self._first_start = self._last_end = None
        self._peak = 0
        self._post_receives()
        middle = len(self.lowered) // 2
        for position, lowered in enumerate(self.lowered):
            if position == middle:
                self.faults.in_middle_of_step(step, self.store)
            self.messenger.poll()
            self.watchdog.record(self.labels[position])
            self._run(position, lowered)
        for bucket in self.launches.get(None, []):
            self._start_sync(bucket, "end of step")
        self._finish_step()
        return self._gather_stats()

    def _run(self, position: int, lowered: LoweredOp) -> None:
        op = lowered.op
        if op.type is OpType.FORWARD:
            self._forward(position, lowered)
        elif op.type in (OpType.BACKWARD, OpType.BACKWARD_INPUT):
            self._backward(position, lowered)
        elif op.type is OpType.BACKWARD_WEIGHT:
            key = (op.pipe, op.stage, op.microbatch)
            start = MPI.Wtime()
            self.stages[op.stage].backward_weight(self._weight_caches.pop(key))
            self._computed(self.labels[position], start)
            self._release(key)
        else:
            for bucket in self.launches.get(position, []):
                self._start_sync(bucket, self.labels[position])

    def _forward(self, position: int, lowered: LoweredOp) -> None:
        op = lowered.op
        context = self._context(op.microbatch)
        x = context.tokens if op.stage == 0 else self._incoming(position, lowered.receive, op)
        start = MPI.Wtime()
        y, cache = self.stages[op.stage].forward(x, context)
        self._computed(self.labels[position], start)
        self._caches[(op.pipe, op.stage, op.microbatch)] = cache
        self._peak = max(self._peak, len(self._caches) + len(self._weight_caches))
        if op.stage == self.last_stage:
            self._losses.append(y)
        else:
            self._outgoing(lowered.send, y)

    def _backward(self, position: int, lowered: LoweredOp) -> None:
        op = lowered.op
        key = (op.pipe, op.stage, op.microbatch)
        if op.stage == self.last_stage:
            dy = self.upstream_gradient_of_loss
        else:
            dy = self._incoming(position, lowered.receive, op)
        cache = self._caches.pop(key)
        start = MPI.Wtime()
        if op.type is OpType.BACKWARD:
            dx = self.stages[op.stage].backward(dy, cache)
        else:
            dx, self._weight_caches[key] = self.stages[op.stage].backward_input(dy, cache)
        self._computed(self.labels[position], start)
        if op.type is OpType.BACKWARD:
            self._release(key)
        if op.stage > 0:
            self._outgoing(lowered.send, dx)

    def _computed(self, label: str, start: float) -> None:
        self.backend.synchronize(while_waiting=self.messenger.poll)
        end = MPI.Wtime()
        self._compute_s += end - start
        self._first_start = start if self._first_start is None else self._first_start
        self._last_end = end
        self.timeline.add(label, "compute", start, end)

    # ----- data movement ------------------------------------------------------

    def _context(self, microbatch: int) -> MicroBatch:
        context = self._contexts.get(microbatch)
        if context is None:
            host = self.batcher.microbatch(self._step, self.grid.replica, microbatch)
            xp = self.backend.xp
            context = MicroBatch(
                tokens=xp.asarray(host.tokens),
                targets=xp.asarray(host.targets),
                attention_mask=None
                if host.attention_mask is None
                else xp.asarray(host.attention_mask),
                loss_normalizer=host.loss_normalizer,
            )
            self._contexts[microbatch] = context
        return context

    def _post_receives(self) -> None:
        """Keep `recv_window` receives posted ahead, in the order the ops need them."""
        while (
            self._next_receive < len(self.receive_plan) and len(self._posted) < self.recv_window
        ):
            planned = self.receive_plan[self._next_receive]
            self._posted[planned.position] = self.messenger.post_receive(
                planned.shape, planned.peer, planned.tag, planned.info
            )
            self._next_receive += 1

    def _incoming(self, position: int, transfer: Transfer, op):
        if transfer.peer is None:
            return self._handovers.pop(transfer)
        pending = self._posted.pop(position)
        start = MPI.Wtime()
        data = self.messenger.finish_receive(pending)
        end = MPI.Wtime()
        self._wait_s += end - start
        self.timeline.add(f"wait {transfer.direction}", "wait", start, end)
        self._held_buffers.setdefault((op.pipe, op.stage, op.microbatch), []).append(data)
        self._post_receives()
        return data

    def _outgoing(self, transfer: Transfer, array) -> None:
        if transfer.peer is None:
            self._handovers[transfer] = array
        elif not self.faults.withhold_send(self._step):
            self.messenger.send(array, self.grid.world_rank_of(transfer.peer), transfer.tag)

    def _release(self, key: tuple) -> None:
        """The chunk's backward is done: its receive buffers can take new messages."""
        for buffer in self._held_buffers.pop(key, []):
            self.messenger.device_pool.give_back(buffer)

    def _start_sync(self, bucket, label: str) -> None:
        self.messenger.start_gradient_sync(bucket.comm, bucket.grad, label)

    def _finish_step(self) -> None:
        start = MPI.Wtime()
        self.messenger.finish_sends("end of step")
        self.messenger.finish_gradient_syncs()
        end = MPI.Wtime()
        self._wait_s += end - start
        self.timeline.add("wait sends and syncs", "wait", start, end)

    def _gather_stats(self) -> StepStats:
        to_host = self.backend.to_host
        row = np.zeros(_COLUMNS)
        row[_LOSS] = sum(float(to_host(loss)) for loss in self._losses)
        row[_SQUARED_NORM] = sum(
            float(to_host(bucket.grad @ bucket.grad))
            for bucket in self.store.buckets
            if bucket.world_members[0] == self.grid.world_rank
        )
        offset = self.timeline.clock_offset
        row[_FIRST_START] = (self._first_start or 0.0) + offset
        row[_LAST_END] = (self._last_end or 0.0) + offset
        row[_COMPUTE] = self._compute_s
        row[_WAIT] = self._wait_s
        row[_PEAK] = self._peak
        row[_STOP] = float(self.stop_requested)
        table = np.zeros((self.comm.Get_size(), _COLUMNS))
        # Non-blocking, so ranks that finish first wait under the watchdog, not spinning in MPI.
        request = self.comm.Iallgather(row, table)
        self.watchdog.wait(request, WaitInfo("step statistics", "end of step", None, None, 0))
        return StepStats(
            loss=float(table[:, _LOSS].sum()),
            grad_norm=math.sqrt(max(0.0, float(table[:, _SQUARED_NORM].sum())))
            if np.isfinite(table[:, _SQUARED_NORM]).all()
            else math.nan,
            window_s=float(table[:, _LAST_END].max() - table[:, _FIRST_START].min()),
            compute_s=table[:, _COMPUTE].tolist(),
            wait_s=table[:, _WAIT].tolist(),
            peak_activations=[int(value) for value in table[:, _PEAK]],
            stop_requested=bool(table[:, _STOP].any()),
        )


def _boundary_shapes(model, stage_layers: list[range], microbatch_size: int) -> list[tuple]:
    """Shape of the array leaving each stage, from the layers' output_shape."""
    shape: tuple = (microbatch_size, model.seq_len)
    shapes = []
    for layer_range in stage_layers:
        for index in layer_range:
            shape = tuple(model.layers[index].output_shape(shape))
        shapes.append(shape)
    return shapes
