"""The pipeline engine: run this rank's ops of a schedule for one step.

Built once from the run's plan and parameter store (`Engine(plan, store,
comm=..., backend=..., watchdog=..., timeline=...)`), it sets up everything
a step repeats: the stages' compute, and from the schedule its `StepProgram`:
every op with what it needs looked up once (its stage, chunk, label, the
persistent receive it waits for, where it sends), the receive buffers and
the gradient sync plan. A step's own state lives in one `StepState`.
`Engine.replan(plan)` switches to another schedule between two steps.

For each op in order: an F takes its input (the tokens, a local hand-over
or a pre-posted receive), runs the stage forward, keeps the cache and sends
its output on; a B (or I, then W) does the same backwards and frees the
cache; a SYNC starts the non-blocking gradient allreduce of every bucket
whose last user on this rank that chunk is (under ZeRO-1 a reduce-scatter
into the rank's shard; the updated shards' all-gather, started after the
optimizer step, is waited for before the first op using each bucket).
After the last op the rank waits for its sends and syncs, then one
`Allgather` of a few numbers gives every rank the global loss, the gradient
norm and the timing of every rank.

`forward_only` runs just the F ops of the same program (evaluation): their
activations arrive in receives posted one at a time into the messenger's
pool, not the step's persistent ones, and each forward's cache and receive
buffer are dropped as soon as its output is sent on.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from mpipipe.backend import Backend
from mpipipe.comm import Messenger, PendingCounts, PendingReceive
from mpipipe.layers.base import MicroBatch
from mpipipe.layers.memory import live_bytes
from mpipipe.plan import RunPlan
from mpipipe.runtime.batch_source import MicroBatchSource
from mpipipe.runtime.faults import NO_FAULTS, FaultHooks
from mpipipe.runtime.memory_meter import CacheMeter, peak_rss_bytes
from mpipipe.runtime.op_costs import OpTimes, cost_slot
from mpipipe.runtime.params import ParamStore
from mpipipe.runtime.receive_slots import ChunkKey, ReceiveNeed, assign_slots, due
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

    recv_window: int = 8  # most receives started ahead of the ops that need them
    # A receive starts while the op this many ops before the one needing it computes.
    receive_lookahead: int = 1
    cuda_aware: bool = False  # MPI takes device buffers directly (else staged through the host)
    # What times each op's compute (None: MPI.Wtime); a test gives a deterministic one.
    clock: Callable[[], float] | None = None
    message_dtype: object = None  # type of activations and gradients sent; None: the backend's


@dataclass(frozen=True, eq=False)
class PlannedReceive:
    """A message this rank receives every step, on its persistent receive."""

    position: int  # of the op that needs it
    shape: tuple
    peer: int  # world rank of the sender
    tag: int
    info: WaitInfo  # what the watchdog says while waiting for it
    pending: PendingReceive  # its persistent request and buffer


@dataclass(eq=False, slots=True)
class BoundOp:
    """One op of this rank with everything it needs, looked up once at set-up."""

    position: int
    label: str  # e.g. "u3F1", for the flight recorder and the timeline
    type: OpType
    run: Callable  # the Engine method that runs ops of this type, called as run(engine, ...)
    compute: StageCompute | None  # None for a SYNC
    chunk: ChunkKey
    microbatch: int
    cost_slot: int  # where its compute time goes in the engine's OpTimes
    first_stage: bool
    last_stage: bool
    receive: PendingReceive | None  # the message it waits for
    handover_in: Transfer | None  # or the array another stage of this rank hands over
    send_peer: int | None  # world rank its output goes to
    send_tag: int | None
    handover_out: Transfer | None  # or the stage of this rank it is handed to
    syncs: list[BucketSync]  # the gradient sums a SYNC starts
    wait_label: str  # timeline name of its wait
    gathers_due: tuple[int, ...]  # ZeRO-1: buckets whose all-gather must end before it runs


@dataclass(eq=False)
class StepProgram:
    """Everything a step of one schedule repeats, built once (collective: the sync plan)."""

    schedule: object
    lowered: list[LoweredOp]
    ops: list[BoundOp]
    receives: list[PlannedReceive]  # in the order the ops need them
    sync: SyncPlan
    # Bytes of the parameter buckets and receive buffers: fixed from set-up on, so counted once
    resident_bytes: int


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
        self.clock = self.options.clock or MPI.Wtime
        self.op_times = OpTimes(plan.schedule.stages)  # this rank's op times, last step
        self.faults = faults
        self.grid = plan.grid
        # Set from a signal handler; every rank learns of it with the step's statistics.
        self.stop_asked_on_this_rank = False
        self.messenger = Messenger(
            comm, backend, self.options.cuda_aware, watchdog, self.options.message_dtype
        )
        self.boundary_shapes = plan.model.boundary_shapes(
            plan.stage_layers, plan.config.data.microbatch_size
        )
        self.stages = self._build_stages(plan, stage_factory)
        self.upstream_scale = 1.0  # the loss gradient the backward starts from, as a number
        self.upstream_gradient_of_loss = backend.xp.asarray(1.0, dtype=backend.dtype)
        self.param_gathers: dict = {}  # ZeRO-1: bucket index -> its all-gather in flight
        self.program = self._build_program(plan)
        # Bytes held beside the engine's own through every step: the trainer's optimizer state.
        self.held_elsewhere_bytes = 0

    # ----- set-up -------------------------------------------------------------

    @property
    def schedule(self):
        return self.program.schedule

    @property
    def lowered(self) -> list[LoweredOp]:
        return self.program.lowered

    @property
    def receive_plan(self) -> list[PlannedReceive]:
        return self.program.receives

    def _check_tags(self, schedule) -> None:
        """The set-up refused schedules the MPI library cannot tag (plan.check_tag_limit)."""
        tag_limit = self.comm.Get_attr(MPI.TAG_UB)
        assert tag_limit is None or max_tag(schedule) <= tag_limit, "tags beyond MPI.TAG_UB"

    def _held_stages(self, plan: RunPlan) -> list[int]:
        chunks = plan.schedule.placement.chunks_on(self.grid.pipe_rank)
        return sorted({stage for _, stage in chunks})

    def _build_stages(
        self, plan: RunPlan, stage_factory: StageFactory | None
    ) -> dict[int, StageCompute]:
        """The compute of every stage this rank holds, by stage."""
        layers = plan.model.layers
        make = stage_factory or (lambda stage, indices, store: LayerStage(layers, indices, store))
        stages = {
            stage: make(stage, plan.stage_layers[stage], self.store)
            for stage in self._held_stages(plan)
        }
        for stage, compute in stages.items():
            if not isinstance(compute, StageCompute):
                raise TypeError(
                    f"the stage factory made {type(compute).__name__} for stage {stage}, which "
                    "lacks forward, backward, backward_input or backward_weight"
                )
        return stages

    def _build_program(self, plan: RunPlan) -> StepProgram:
        schedule = plan.schedule
        self._check_tags(schedule)
        lowered = lower(schedule, self.grid.pipe_rank)
        labels = [str(item.op) for item in lowered]
        sync = SyncPlan.build(self.comm, self.store, lowered, set(self.stages))
        receives = self._plan_receives(lowered, labels)
        by_position = {planned.position: planned.pending for planned in receives}
        # Plain functions, not bound methods: the program holds no reference to the engine.
        runners = {
            OpType.FORWARD: Engine._forward,
            OpType.BACKWARD: Engine._backward,
            OpType.BACKWARD_INPUT: Engine._backward,
            OpType.BACKWARD_WEIGHT: Engine._backward_weight,
            OpType.SYNC: Engine._sync,
        }
        last_stage = schedule.stages - 1
        first_use = _first_use_of_buckets(lowered, self.store)
        ops = []
        for position, item in enumerate(lowered):
            op, receive, send = item.op, item.receive, item.send
            ops.append(BoundOp(
                position=position,
                label=labels[position],
                type=op.type,
                run=runners[op.type],
                compute=self.stages.get(op.stage),
                chunk=(op.pipe, op.stage, op.microbatch),
                microbatch=op.microbatch,
                cost_slot=cost_slot(op),
                first_stage=op.stage == 0,
                last_stage=op.stage == last_stage,
                receive=by_position.get(position),
                handover_in=receive if receive is not None and receive.peer is None else None,
                send_peer=None if send is None or send.peer is None
                else self.grid.world_rank_of(send.peer),
                send_tag=None if send is None else send.tag,
                handover_out=send if send is not None and send.peer is None else None,
                syncs=sync.starting_at(position) if op.type is OpType.SYNC else [],
                wait_label=f"wait {receive.direction}" if receive is not None else "",
                gathers_due=first_use.get(position, ()),
            ))
        # Every array of a bucket (master, gradient and working copies, ZeRO-1's buffers) and
        # every receive buffer; their shapes never change, so neither does the count.
        resident = live_bytes(
            self.store.buckets,
            [(planned.pending.buffer, planned.pending.staging) for planned in receives],
        )
        return StepProgram(schedule, lowered, ops, receives, sync, resident)

    def _plan_receives(self, lowered: list[LoweredOp], labels: list[str]) -> list[PlannedReceive]:
        """Every message this rank receives in a step, in the order its ops need them, each
        with a persistent receive on the buffer it always lands in (see receive_slots.py)."""
        itemsize = self.messenger.message_dtype.itemsize
        needs, messages = [], []
        for position, item in enumerate(lowered):
            transfer = item.receive
            if transfer is None or transfer.peer is None:
                continue
            op = item.op
            shape = self.boundary_shapes[transfer.boundary]
            needs.append(ReceiveNeed(position, shape, (op.pipe, op.stage, op.microbatch)))
            messages.append((transfer, shape))
        releases = {
            position: (item.op.pipe, item.op.stage, item.op.microbatch)
            for position, item in enumerate(lowered)
            if item.op.type in (OpType.BACKWARD, OpType.BACKWARD_WEIGHT)
        }
        slots = assign_slots(
            needs, releases, self.options.recv_window, self.options.receive_lookahead
        )
        buffers = [self.messenger.empty(shape) for shape in slots.buffer_kinds]
        stagings = [self.messenger.staging_empty(shape) for shape in slots.staging_kinds]
        planned = []
        for index, (need, (transfer, shape)) in enumerate(zip(needs, messages, strict=True)):
            peer = self.grid.world_rank_of(transfer.peer)
            nbytes = int(np.prod(shape)) * itemsize
            info = WaitInfo(transfer.direction, labels[need.position], peer, transfer.tag, nbytes)
            pending = self.messenger.persistent_receive(
                buffers[slots.buffers[index]], stagings[slots.stagings[index]], peer,
                transfer.tag, info,
            )
            planned.append(PlannedReceive(need.position, shape, peer, transfer.tag, info, pending))
        return planned

    # ----- what others may ask ------------------------------------------------

    def ask_to_stop(self) -> None:
        """Stop after the current step (safe from a signal handler); every rank learns of it."""
        self.stop_asked_on_this_rank = True

    def pending_requests(self) -> PendingCounts:
        """MPI requests this rank started and has not finished: all zero between steps.

        The persistent receives of the step's messages stay allocated between steps
        (inactive); `close` frees them."""
        return self.messenger.pending()

    def replan(self, plan: RunPlan) -> None:
        """Run `plan`'s schedule from the next step on; collective, between two steps.

        The new plan must give this rank the same stages with the same layers (the
        parameter store and the stages' compute are kept): a schedule of another
        placement or partition needs a new ParamStore and a new Engine. The old
        schedule's persistent receives and sync communicators are freed.
        """
        if self._held_stages(plan) != sorted(self.stages) or any(
            plan.stage_layers[stage] != self.plan.stage_layers[stage] for stage in self.stages
        ):
            raise ValueError(
                "Engine.replan: the new plan moves stages or layers on this rank; build a new "
                "ParamStore and Engine for it"
            )
        self.finish_param_gathers()  # they run on the old program's communicators
        if self.pending_requests().total:
            raise RuntimeError("Engine.replan: called in the middle of a step")
        old = self.program
        self.program = self._build_program(plan)
        self.plan = plan
        self._free(old)

    def close(self) -> None:
        """Free this engine's persistent requests and sync communicators (between steps)."""
        self.finish_param_gathers()
        self._free(self.program)

    def _free(self, program: StepProgram) -> None:
        for planned in program.receives:
            self.messenger.free_receive(planned.pending)
        for sync in program.sync.in_bucket_order():  # as they were made, as on every rank
            sync.comm.Free()
        program.receives.clear()
        program.sync.launches.clear()

    # ----- one step -----------------------------------------------------------

    def forward_backward(self, step: int, loss_scale: float = 1.0) -> StepStats:
        """Run this rank's ops for `step`; gradients are summed over all holders afterwards.

        The backward starts from `loss_scale` (fp16's loss scaling), so the gradients are
        `loss_scale` times the loss's; the reported loss is the loss itself.
        """
        program = self.program
        self.watchdog.step = step
        self.timeline.begin_step(step)
        self.store.zero_grads()
        self.op_times.begin_step()
        if loss_scale != self.upstream_scale:
            self.upstream_scale = loss_scale
            self.upstream_gradient_of_loss = self.backend.xp.asarray(
                loss_scale, dtype=self.backend.dtype
            )
        state = StepState(step, self.plan.batcher, memory=self._cache_meter())
        self._start_receives(state, -1)
        middle = len(program.ops) // 2
        record = self.watchdog.record
        for bound in program.ops:
            if bound.position == middle:
                self.faults.in_middle_of_step(step, self.store)
            record(bound.label)
            if bound.gathers_due:
                self._wait_param_gathers(state, bound.gathers_due)
            bound.run(self, state, bound)
        for sync in program.sync.starting_at(None):
            self._start_sync(sync, "end of step")
        self._finish_step(state)
        return self._gather_stats(state)

    def forward_only(self, step: int, source: MicroBatchSource) -> StepStats:
        """Run this rank's F ops on `source`'s micro-batches of `step`: the loss, no gradients.

        Collective like a step; the returned statistics' loss is the sum of the last
        stage's outputs over the micro-batches and replicas (gradient fields mean nothing).
        """
        program = self.program
        self.finish_param_gathers()
        self.timeline.pause()  # evaluation ops stay out of the trace
        state = StepState(step, source, memory=self._cache_meter())
        state.next_receive = len(program.receives)  # the step's persistent receives stay idle
        forwards = [op for op in program.ops if op.type is OpType.FORWARD]
        wanted = deque(planned for planned in program.receives
                       if program.ops[planned.position].type is OpType.FORWARD)
        posted: dict[int, PendingReceive] = {}
        for op in forwards:
            while wanted and len(posted) < self.options.recv_window:
                planned = wanted.popleft()
                posted[planned.position] = self.messenger.post_receive(
                    planned.shape, planned.peer, planned.tag, planned.info
                )
            self.watchdog.record(op.label)
            pending = posted.pop(op.position, None)
            x = None if pending is None else self._finish_eval_receive(state, pending)
            self._forward(state, op, x)
            state.take_cache(op.chunk)
            if pending is not None:
                self.messenger.buffer_pool.give_back(pending.buffer)
        self._finish_step(state)
        return self._gather_stats(state)

    def _cache_meter(self) -> CacheMeter:
        return CacheMeter(self.backend.device_bytes_in_use if self.backend.is_gpu else None)

    def resident_bytes(self) -> int:
        """What this rank holds through every step (CPU): its parameter buckets, the receive
        buffers, and what others hold beside them (`held_elsewhere_bytes`)."""
        return self.program.resident_bytes + self.held_elsewhere_bytes

    def _finish_eval_receive(self, state: StepState, pending: PendingReceive):
        start = MPI.Wtime()
        data = self.messenger.finish_receive(pending)
        state.wait_s += MPI.Wtime() - start
        return data

    def _forward(self, state: StepState, op: BoundOp, x=None) -> None:
        """The forward of `op`, on `x` (evaluation hands it over) or on its own input."""
        context = self._context(state, op.microbatch)
        if x is None:
            x = context.tokens if op.first_stage else self._incoming(state, op)
        start = self.clock()
        y, cache = op.compute.forward(x, context)
        self._computed(state, op, start)
        state.keep_cache(op.chunk, cache)
        if op.last_stage:
            state.losses.append(y)
        else:
            self._outgoing(state, op, y)

    def _backward(self, state: StepState, op: BoundOp) -> None:
        dy = self.upstream_gradient_of_loss if op.last_stage else self._incoming(state, op)
        cache = state.take_cache(op.chunk)
        start = self.clock()
        if op.type is OpType.BACKWARD:
            dx = op.compute.backward(dy, cache)
        else:
            dx, weight_cache = op.compute.backward_input(dy, cache)
            state.keep_weight_cache(op.chunk, weight_cache)
        self._computed(state, op, start)
        if not op.first_stage:
            self._outgoing(state, op, dx)

    def _backward_weight(self, state: StepState, op: BoundOp) -> None:
        start = self.clock()
        op.compute.backward_weight(state.take_weight_cache(op.chunk))
        self._computed(state, op, start)

    def _sync(self, state: StepState, op: BoundOp) -> None:
        for sync in op.syncs:
            self._start_sync(sync, op.label)
        self._start_receives(state, op.position)
        self.messenger.poll()

    def _computed(self, state: StepState, op: BoundOp, start: float) -> None:
        """The op's work is launched: start the receives due and let MPI progress (it may copy
        a message that has arrived while the device works; on a CPU backend the work is
        done by now, and this is the progress between two ops), then wait for the work."""
        self._start_receives(state, op.position)
        poll = self.messenger.poll
        poll()
        self.backend.synchronize(while_waiting=poll)
        end = self.clock()
        state.computed(start, end)
        self.op_times.add(op.cost_slot, end - start)
        self.timeline.add(op.label, "compute", start, end)

    # ----- data movement ------------------------------------------------------

    def _context(self, state: StepState, microbatch: int) -> MicroBatch:
        context = state.contexts.get(microbatch)
        if context is None:
            host = state.source.microbatch(state.step, self.grid.replica, microbatch)
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

    def _start_receives(self, state: StepState, position: int) -> None:
        """Start the receives the op at `position` (-1: the step's start) starts, in the order
        the ops need them (the rule of receive_slots.due, which chose their buffers)."""
        receives = self.program.receives
        window, lookahead = self.options.recv_window, self.options.receive_lookahead
        while state.next_receive < len(receives) and due(
            receives[state.next_receive].position, state.next_receive, state.finished_receives,
            position, window, lookahead,
        ):
            self.messenger.start_receive(receives[state.next_receive].pending)
            state.next_receive += 1

    def _incoming(self, state: StepState, op: BoundOp):
        if op.receive is None:
            return state.handovers.pop(op.handover_in)
        start = MPI.Wtime()
        data = self.messenger.finish_receive(op.receive)
        end = MPI.Wtime()
        state.wait_s += end - start
        state.finished_receives += 1
        self.timeline.add(op.wait_label, "wait", start, end)
        return data

    def _outgoing(self, state: StepState, op: BoundOp, array) -> None:
        if op.handover_out is not None:
            state.handovers[op.handover_out] = array  # a hand-over's send equals its receive
        elif not self.faults.withhold_send(state.step):
            self.messenger.send(array, op.send_peer, op.send_tag)

    def _start_sync(self, sync: BucketSync, label: str) -> None:
        bucket = sync.bucket
        if bucket.shard is None:
            self.messenger.start_gradient_sync(sync.comm, bucket.grad, label)
        else:
            self.messenger.start_gradient_reduce_scatter(
                sync.comm, bucket.grad_padded, bucket.grad_shard, label
            )

    # ----- ZeRO-1's all-gather of the updated weights ---------------------------

    def start_param_gathers(self) -> None:
        """ZeRO-1, after the optimizer updated this rank's shards (and refresh_working cast
        them): start all-gathering every sharded bucket's weights (non-blocking). The next
        step waits for each just before its first op that uses the bucket."""
        for sync in self.program.sync.in_bucket_order():
            if sync.bucket.shard is not None:
                self.param_gathers[sync.bucket.index] = self.messenger.start_all_gather(
                    sync.comm, sync.bucket.gathered, "after update"
                )

    def finish_param_gathers(self) -> None:
        """Wait for every all-gather still in flight (before anything else reads the
        weights: an evaluation, a save, a load, the caller after a step)."""
        self._finish_param_gathers_of(sorted(self.param_gathers))

    def _wait_param_gathers(self, state: StepState, indices) -> None:
        start = MPI.Wtime()
        self._finish_param_gathers_of(indices)
        end = MPI.Wtime()
        state.wait_s += end - start
        self.timeline.add("wait weights", "wait", start, end)

    def _finish_param_gathers_of(self, indices) -> None:
        for index in indices:
            pending = self.param_gathers.pop(index, None)
            if pending is not None:
                self.messenger.finish_sync(pending)

    def bucket_comms(self) -> dict[int, object]:
        """The communicator of every bucket with several holders, by bucket index."""
        return {sync.bucket.index: sync.comm for sync in self.program.sync.in_bucket_order()}

    def _finish_step(self, state: StepState) -> None:
        start = MPI.Wtime()
        self.messenger.finish_sends("end of step")
        self.messenger.finish_gradient_syncs()
        self.param_gathers.clear()  # any not waited for by an op are done now too
        end = MPI.Wtime()
        state.wait_s += end - start
        self.timeline.add("wait sends and syncs", "wait", start, end)

    def _gather_stats(self, state: StepState) -> StepStats:
        to_host = self.backend.to_host
        offset = self.timeline.clock_offset
        # Each summed gradient element is counted once over the world: a whole bucket by
        # its first holder, a ZeRO-1 shard by its owner (padding adds nothing).
        squares = {
            bucket.index: float(to_host(_summed_gradient(bucket) @ _summed_gradient(bucket)))
            for bucket in self.store.buckets
        }
        row = stats_row(
            loss=sum(float(to_host(loss)) for loss in state.losses),
            squared_norm=sum(
                squares[bucket.index]
                for bucket in self.store.buckets
                if bucket.shard is not None or bucket.world_members[0] == self.grid.world_rank
            ),
            overflow=not all(math.isfinite(square) for square in squares.values()),
            first_start=(state.first_start or 0.0) + offset,
            last_end=(state.last_end or 0.0) + offset,
            compute_s=state.compute_s,
            wait_s=state.wait_s,
            peak=state.peak,
            stop_asked=self.stop_asked_on_this_rank,
            **self._measured_memory(state),
        )
        table = np.zeros((self.comm.Get_size(), COLUMNS))
        # Non-blocking, so ranks that finish first wait under the watchdog, not spinning in MPI.
        request = self.comm.Iallgather(row, table)
        self.watchdog.wait(request, WaitInfo("step statistics", "end of step", None, None, 0))
        return StepStats.from_rows(table)


    def _measured_memory(self, state: StepState) -> dict[str, int]:
        meter = state.memory
        if self.backend.is_gpu:
            meter.sample_device()
            memory = meter.device_peak
        else:
            memory = self.resident_bytes() + meter.peak
        return {"memory_bytes": memory, "activation_bytes": meter.peak,
                "rss_bytes": peak_rss_bytes()}


def _first_use_of_buckets(lowered: list[LoweredOp], store: ParamStore) -> dict:
    """Op position -> the sharded buckets that op is the first of this rank's ops to use."""
    stages_of = {bucket.index: set(bucket.stages) for bucket in store.buckets if bucket.shard}
    first: dict[int, list[int]] = {}
    for position, item in enumerate(lowered):
        for index in [index for index, stages in stages_of.items() if item.op.stage in stages]:
            first.setdefault(position, []).append(index)
            del stages_of[index]
    return {position: tuple(indices) for position, indices in first.items()}


def _summed_gradient(bucket):
    """The part of the bucket's gradient this rank holds summed over its holders."""
    return bucket.grad if bucket.shard is None else bucket.grad_shard
