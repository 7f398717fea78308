"""The pipeline engine: run this rank's ops of a schedule for one step.

Built once from the run's plan and parameter store (`Engine(plan, store,
comm=..., backend=..., watchdog=..., timeline=...)`), it sets up everything
a step repeats: the stages' compute, the lowered ops, the receives of a step
and the gradient sync plan. A step's own state lives in one `StepState`.

For each op in order: an F takes its input (the tokens, a local hand-over
or a pre-posted receive), runs the stage forward, keeps the cache and sends
its output on; a B (or I, then W) does the same backwards and frees the
cache; a SYNC starts the non-blocking gradient allreduce of every bucket
whose last user on this rank that chunk is. After the last op the rank
waits for its sends and syncs, then one `Allgather` of a few numbers gives
every rank the global loss, the gradient norm and the timing of every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from mpipipe.backend import Backend
from mpipipe.comm import Messenger, PendingCounts
from mpipipe.errors import UsageError
from mpipipe.layers.base import MicroBatch
from mpipipe.plan import RunPlan
from mpipipe.runtime.faults import NO_FAULTS, FaultHooks
from mpipipe.runtime.params import ParamStore
from mpipipe.runtime.stage import LayerStage, StageCompute, StageFactory
from mpipipe.runtime.step_state import StepState
from mpipipe.runtime.step_stats import COLUMNS, StepStats, stats_row
from mpipipe.runtime.sync_plan import BucketSync, SyncPlan
from mpipipe.runtime.timeline import Timeline
from mpipipe.runtime.watchdog import WaitInfo, Watchdog
from mpipipe.schedules.lowering import LoweredOp, Transfer, lower, max_tag
from mpipipe.schedules.ops import OpType


@dataclass(frozen=True)
class EngineOptions:
    """How the engine moves data, beyond what the plan decides."""

    recv_window: int = 8  # receives kept posted ahead of the ops that need them
    cuda_aware: bool = False  # MPI takes device buffers directly (else staged through the host)


@dataclass(frozen=True)
class _PlannedReceive:
    """A message this rank receives every step, with what the watchdog says while waiting."""

    position: int  # of the op that needs it
    shape: tuple
    peer: int  # world rank of the sender
    tag: int
    info: WaitInfo


class Engine:
    def __init__(
        self,
        plan: RunPlan,
        store: ParamStore,
        *,
        comm,
        backend: Backend,
        watchdog: Watchdog,
        timeline: Timeline,
        options: EngineOptions | None = None,
        faults: FaultHooks = NO_FAULTS,
        stage_factory: StageFactory | None = None,
    ):
        """Collective over `comm` (it creates the gradient sync communicators).

        `stage_factory(stage, layer_indices, store)` builds each stage's compute; by default
        the stage of the model's real layers (`LayerStage`).
        """
        self.plan = plan
        self.store = store
        self.comm = comm
        self.backend = backend
        self.watchdog = watchdog
        self.timeline = timeline
        self.options = options or EngineOptions()
        self.faults = faults
        self.grid = plan.grid
        self.schedule = plan.schedule
        # Set from a signal handler; every rank learns of it with the step's statistics.
        self.stop_asked_on_this_rank = False
        self.last_stage = self.schedule.stages - 1
        self.lowered: list[LoweredOp] = lower(self.schedule, self.grid.pipe_rank)
        self.labels = [str(lowered.op) for lowered in self.lowered]
        self._check_tags()
        self.messenger = Messenger(comm, backend, self.options.cuda_aware, watchdog)
        self.boundary_shapes = _boundary_shapes(
            plan.model, plan.stage_layers, plan.config.data.microbatch_size
        )
        self.stages = self._build_stages(stage_factory)
        self.sync = SyncPlan.build(comm, store, self.lowered, set(self.stages))
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

    def _build_stages(self, stage_factory: StageFactory | None) -> dict[int, StageCompute]:
        """The compute of every stage this rank holds, by stage."""
        layers = self.plan.model.layers
        make = stage_factory or (lambda stage, indices, store: LayerStage(layers, indices, store))
        chunks = self.schedule.placement.chunks_on(self.grid.pipe_rank)
        held = sorted({stage for _, stage in chunks})
        stages = {stage: make(stage, self.plan.stage_layers[stage], self.store) for stage in held}
        for stage, compute in stages.items():
            if not isinstance(compute, StageCompute):
                raise TypeError(
                    f"the stage factory made {type(compute).__name__} for stage {stage}, which "
                    "lacks forward, backward, backward_input or backward_weight"
                )
        return stages

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

    # ----- what others may ask ------------------------------------------------

    def ask_to_stop(self) -> None:
        """Stop after the current step (safe from a signal handler); every rank learns of it."""
        self.stop_asked_on_this_rank = True

    def pending_requests(self) -> PendingCounts:
        """MPI requests this rank started and has not finished: all zero between steps."""
        return self.messenger.pending()

    # ----- one step -----------------------------------------------------------

    def forward_backward(self, step: int) -> StepStats:
        """Run this rank's ops for `step`; gradients are summed over all holders afterwards."""
        self.watchdog.step = step
        self.timeline.begin_step(step)
        self.store.zero_grads()
        state = StepState(step)
        self._post_receives(state)
        middle = len(self.lowered) // 2
        for position, lowered in enumerate(self.lowered):
            if position == middle:
                self.faults.in_middle_of_step(step, self.store)
            self.messenger.poll()
            self.watchdog.record(self.labels[position])
            self._run(state, position, lowered)
        for sync in self.sync.starting_at(None):
            self._start_sync(sync, "end of step")
        self._finish_step(state)
        return self._gather_stats(state)

    def _run(self, state: StepState, position: int, lowered: LoweredOp) -> None:
        op = lowered.op
        if op.type is OpType.FORWARD:
            self._forward(state, position, lowered)
        elif op.type in (OpType.BACKWARD, OpType.BACKWARD_INPUT):
            self._backward(state, position, lowered)
        elif op.type is OpType.BACKWARD_WEIGHT:
            key = (op.pipe, op.stage, op.microbatch)
            start = MPI.Wtime()
            self.stages[op.stage].backward_weight(state.weight_caches.pop(key))
            self._computed(state, self.labels[position], start)
            self._release(state, key)
        else:
            for sync in self.sync.starting_at(position):
                self._start_sync(sync, self.labels[position])

    def _forward(self, state: StepState, position: int, lowered: LoweredOp) -> None:
        op = lowered.op
        context = self._context(state, op.microbatch)
        if op.stage == 0:
            x = context.tokens
        else:
            x = self._incoming(state, position, lowered.receive, op)
        start = MPI.Wtime()
        y, cache = self.stages[op.stage].forward(x, context)
        self._computed(state, self.labels[position], start)
        state.keep_cache((op.pipe, op.stage, op.microbatch), cache)
        if op.stage == self.last_stage:
            state.losses.append(y)
        else:
            self._outgoing(state, lowered.send, y)

    def _backward(self, state: StepState, position: int, lowered: LoweredOp) -> None:
        op = lowered.op
        key = (op.pipe, op.stage, op.microbatch)
        if op.stage == self.last_stage:
            dy = self.upstream_gradient_of_loss
        else:
            dy = self._incoming(state, position, lowered.receive, op)
        cache = state.caches.pop(key)
        start = MPI.Wtime()
        if op.type is OpType.BACKWARD:
            dx = self.stages[op.stage].backward(dy, cache)
        else:
            dx, state.weight_caches[key] = self.stages[op.stage].backward_input(dy, cache)
        self._computed(state, self.labels[position], start)
        if op.type is OpType.BACKWARD:
            self._release(state, key)
        if op.stage > 0:
            self._outgoing(state, lowered.send, dx)

    def _computed(self, state: StepState, label: str, start: float) -> None:
        self.backend.synchronize(while_waiting=self.messenger.poll)
        end = MPI.Wtime()
        state.computed(start, end)
        self.timeline.add(label, "compute", start, end)

    # ----- data movement ------------------------------------------------------

    def _context(self, state: StepState, microbatch: int) -> MicroBatch:
        context = state.contexts.get(microbatch)
        if context is None:
            host = self.plan.batcher.microbatch(state.step, self.grid.replica, microbatch)
            xp = self.backend.xp
            context = MicroBatch(
                tokens=xp.asarray(host.tokens),
                targets=xp.asarray(host.targets),
                attention_mask=None
                if host.attention_mask is None
                else xp.asarray(host.attention_mask),
                loss_normalizer=host.loss_normalizer,
            )
            state.contexts[microbatch] = context
        return context

    def _post_receives(self, state: StepState) -> None:
        """Keep `recv_window` receives posted ahead, in the order the ops need them."""
        window = self.options.recv_window
        while state.next_receive < len(self.receive_plan) and len(state.posted) < window:
            planned = self.receive_plan[state.next_receive]
            state.posted[planned.position] = self.messenger.post_receive(
                planned.shape, planned.peer, planned.tag, planned.info
            )
            state.next_receive += 1

    def _incoming(self, state: StepState, position: int, transfer: Transfer, op):
        if transfer.peer is None:
            return state.handovers.pop(transfer)
        pending = state.posted.pop(position)
        start = MPI.Wtime()
        data = self.messenger.finish_receive(pending)
        end = MPI.Wtime()
        state.wait_s += end - start
        self.timeline.add(f"wait {transfer.direction}", "wait", start, end)
        state.held_buffers.setdefault((op.pipe, op.stage, op.microbatch), []).append(data)
        self._post_receives(state)
        return data

    def _outgoing(self, state: StepState, transfer: Transfer, array) -> None:
        if transfer.peer is None:
            state.handovers[transfer] = array  # a hand-over's send equals its receive
        elif not self.faults.withhold_send(state.step):
            self.messenger.send(array, self.grid.world_rank_of(transfer.peer), transfer.tag)

    def _release(self, state: StepState, key: tuple) -> None:
        """The chunk's backward is done: its receive buffers can take new messages."""
        for buffer in state.held_buffers.pop(key, []):
            self.messenger.buffer_pool.give_back(buffer)

    def _start_sync(self, sync: BucketSync, label: str) -> None:
        self.messenger.start_gradient_sync(sync.comm, sync.bucket.grad, label)

    def _finish_step(self, state: StepState) -> None:
        start = MPI.Wtime()
        self.messenger.finish_sends("end of step")
        self.messenger.finish_gradient_syncs()
        end = MPI.Wtime()
        state.wait_s += end - start
        self.timeline.add("wait sends and syncs", "wait", start, end)

    def _gather_stats(self, state: StepState) -> StepStats:
        to_host = self.backend.to_host
        offset = self.timeline.clock_offset
        row = stats_row(
            loss=sum(float(to_host(loss)) for loss in state.losses),
            squared_norm=sum(
                float(to_host(bucket.grad @ bucket.grad))
                for bucket in self.store.buckets
                if bucket.world_members[0] == self.grid.world_rank
            ),
            first_start=(state.first_start or 0.0) + offset,
            last_end=(state.last_end or 0.0) + offset,
            compute_s=state.compute_s,
            wait_s=state.wait_s,
            peak=state.peak,
            stop_asked=self.stop_asked_on_this_rank,
        )
        table = np.zeros((self.comm.Get_size(), COLUMNS))
        # Non-blocking, so ranks that finish first wait under the watchdog, not spinning in MPI.
        request = self.comm.Iallgather(row, table)
        self.watchdog.wait(request, WaitInfo("step statistics", "end of step", None, None, 0))
        return StepStats.from_rows(table)


def _boundary_shapes(model, stage_layers: list[range], microbatch_size: int) -> list[tuple]:
    """Shape of the array leaving each stage, from the layers' output_shape."""
    shape: tuple = (microbatch_size, model.seq_len)
    shapes = []
    for layer_range in stage_layers:
        for index in layer_range:
            shape = tuple(model.layers[index].output_shape(shape))
        shapes.append(shape)
    return shapes
