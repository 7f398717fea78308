"""Dry-run a schedule: when each op starts and ends, and what that costs.

Every rank runs its ops strictly in list order, each as soon as the rank is
free and the op's inputs exist (plus `latency` when they come from another
rank). An op waits for:

    F(p, s, m)   F(p, s-1, m)                    (nothing at s = 0)
    B/I(p, s, m) F(p, s, m), and B/I(p, s+1, m)  (only its own F at s = S-1: the loss)
    W(p, s, m)   I(p, s, m)

where B/I(p, s+1, m) is whichever of the two the schedule runs there: one
stage may use B on some micro-batches and I and W on others (DualPipeV).
    SYNC(p, s)   nothing (it follows the chunk's backwards in list order and costs 0)

If some rank can never run its next op, the schedule deadlocks and
`simulate` raises a `ScheduleError` naming each stuck rank's op and what it
waits for, with the step x rank grid marked where they stopped.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, replace

from mpipipe.errors import UsageError
from mpipipe.schedules.grid import ScheduleError, step_grid
from mpipipe.schedules.lowering import lower
from mpipipe.schedules.ops import Op, OpType
from mpipipe.schedules.schedule import Schedule

# The range of op costs and latency a dry run takes (see OpCosts.parse).
COST_MIN, COST_MAX = 1e-6, 1e6


@dataclass(frozen=True)
class OpCosts:
    """Time one op takes on one of the schedule's own stages.

    Split schedules (I and W ops) use backward_input and backward_weight;
    left out, they split `backward` in half, or take what the other leaves.
    `per_stage`, when given, holds (F, I, W) for every stage and overrides
    the four uniform costs (a full backward then takes I + W).
    """

    forward: float = 1.0
    backward: float = 2.0
    backward_input: float | None = None
    backward_weight: float | None = None
    latency: float = 0.0  # added to every dependency that crosses ranks
    per_stage: tuple[tuple[float, float, float], ...] = ()

    def __post_init__(self):
        if self.backward_input is None and self.backward_weight is None:
            object.__setattr__(self, "backward_input", self.backward / 2)
            object.__setattr__(self, "backward_weight", self.backward / 2)
        elif self.backward_input is None:
            object.__setattr__(self, "backward_input", self.backward - self.backward_weight)
        elif self.backward_weight is None:
            object.__setattr__(self, "backward_weight", self.backward - self.backward_input)
        object.__setattr__(self, "per_stage", tuple(tuple(costs) for costs in self.per_stage))

    @classmethod
    def parse(
        cls, text: str, latency: float = 0.0, name: str = "--cost", alternatives: tuple = ()
    ) -> OpCosts:
        """Read `--cost F,B` (I = W = B/2) or `--cost F,B,W` (I = B - W); a mistake is one
        line naming `name` and, before the numbers, the other values it takes.

        The simulator has no time unit, so every cost lies in [COST_MIN, COST_MAX]: a
        zero-length op has no place in the grid, and wider ranges lose float precision.
        """
        others = "".join(f"{alternative!r} or " for alternative in alternatives)
        usage = (
            f"{name}: expected {others}F,B or F,B,W as finite numbers from {COST_MIN:g} to "
            f"{COST_MAX:g} with W < B (such as 1,2 or 1,2,1), got {text!r}"
        )
        try:
            numbers = [float(part) for part in text.split(",")]
        except ValueError:
            raise UsageError(usage) from None
        weight_too_big = len(numbers) == 3 and numbers[2] >= numbers[1]
        in_range = all(COST_MIN <= number <= COST_MAX for number in numbers)  # False for NaN
        if len(numbers) not in (2, 3) or not in_range or weight_too_big:
            raise UsageError(usage)
        if not 0 <= latency <= COST_MAX:  # False for NaN
            raise UsageError(
                f"--latency: expected a number from 0 to {COST_MAX:g}, got {latency}"
            )
        weight = numbers[2] if len(numbers) == 3 else None
        return cls(forward=numbers[0], backward=numbers[1], backward_weight=weight, latency=latency)

    def cost(self, op_type: OpType) -> float:
        return {
            OpType.FORWARD: self.forward,
            OpType.BACKWARD: self.backward,
            OpType.BACKWARD_INPUT: self.backward_input,
            OpType.BACKWARD_WEIGHT: self.backward_weight,
            OpType.SYNC: 0.0,
        }[op_type]

    def duration(self, op: Op) -> float:
        """How long `op` takes: its stage's own cost where `per_stage` is given."""
        if not self.per_stage or op.type is OpType.SYNC:
            return self.cost(op.type)
        forward, backward_input, backward_weight = self.per_stage[op.stage]
        return {
            OpType.FORWARD: forward,
            OpType.BACKWARD: backward_input + backward_weight,
            OpType.BACKWARD_INPUT: backward_input,
            OpType.BACKWARD_WEIGHT: backward_weight,
        }[op.type]

    def scaled(self, factor: float) -> OpCosts:
        """The same costs with every compute cost (not the latency) times `factor`."""
        return replace(
            self,
            forward=self.forward * factor,
            backward=self.backward * factor,
            backward_input=self.backward_input * factor,
            backward_weight=self.backward_weight * factor,
            per_stage=tuple(tuple(cost * factor for cost in costs) for costs in self.per_stage),
        )

    def check_stages(self, stages: int) -> None:
        """Raise a UsageError unless `per_stage` is empty or has one entry per stage."""
        if self.per_stage and len(self.per_stage) != stages:
            raise UsageError(
                f"costs: per-stage costs give {len(self.per_stage)} stages, but the schedule "
                f"has {stages}"
            )

    def describe(self, split_backward: bool = True) -> str:
        """The costs in words, as the text output prints them: 'F=1 I=1.5 W=0.5 latency=0'."""
        if self.per_stage:
            stages = " ".join(
                f"{forward:g}/{backward_input:g}/{backward_weight:g}"
                for forward, backward_input, backward_weight in self.per_stage
            )
            return f"F/I/W per stage {stages} latency={self.latency:g}"
        backward = (
            f"I={self.backward_input:g} W={self.backward_weight:g}"
            if split_backward
            else f"B={self.backward:g}"
        )
        return f"F={self.forward:g} {backward} latency={self.latency:g}"

    def to_text(self) -> str:
        """An exact, comma- and space-free form for Schedule.options and files (`from_text`)."""
        fields = [
            f"F={self.forward!r}",
            f"I={self.backward_input!r}",
            f"W={self.backward_weight!r}",
            f"latency={self.latency!r}",
        ]
        if self.per_stage:
            stages = "|".join(":".join(map(repr, costs)) for costs in self.per_stage)
            fields.append(f"stages={stages}")
        return ";".join(fields)

    @classmethod
    def from_text(cls, text: str) -> OpCosts:
        """The costs `to_text` wrote."""
        try:
            fields = dict(item.split("=", 1) for item in text.split(";"))
            per_stage = tuple(
                tuple(float(cost) for cost in costs.split(":"))
                for costs in fields.get("stages", "").split("|")
                if costs
            )
            backward_input, backward_weight = float(fields["I"]), float(fields["W"])
            return cls(
                forward=float(fields["F"]),
                backward=backward_input + backward_weight,
                backward_input=backward_input,
                backward_weight=backward_weight,
                latency=float(fields["latency"]),
                per_stage=per_stage,
            )
        except (KeyError, ValueError):
            raise UsageError(
                f"costs: cannot read {text!r}; expected F=..;I=..;W=..;latency=.. as written "
                "by OpCosts.to_text"
            ) from None


@dataclass(frozen=True)
class TimedOp:
    op: Op
    start: float
    end: float


def dependencies(
    op: Op, stages: int, split_backward: bool | Container[tuple[int, int, int]]
) -> list[Op]:
    """The ops whose results `op` needs (see the module docstring).

    `split_backward` says whether backwards are I and W ops: for the whole
    schedule (a bool), or as the (pipe, stage, microbatch) whose backward is split.
    """
    if op.type is OpType.FORWARD:
        return [] if op.stage == 0 else [Op(OpType.FORWARD, op.stage - 1, op.microbatch, op.pipe)]
    if op.type in (OpType.BACKWARD, OpType.BACKWARD_INPUT):
        needs = [Op(OpType.FORWARD, op.stage, op.microbatch, op.pipe)]
        if op.stage < stages - 1:
            below = (op.pipe, op.stage + 1, op.microbatch)
            split = split_backward if isinstance(split_backward, bool) else below in split_backward
            downstream = OpType.BACKWARD_INPUT if split else OpType.BACKWARD
            needs.append(Op(downstream, op.stage + 1, op.microbatch, op.pipe))
        return needs
    if op.type is OpType.BACKWARD_WEIGHT:
        return [Op(OpType.BACKWARD_INPUT, op.stage, op.microbatch, op.pipe)]
    return []


@dataclass
class Simulation:
    schedule: Schedule
    costs: OpCosts  # as simulated, after any scaling
    timeline: list[list[TimedOp]]  # timeline[rank] in list order

    @property
    def makespan(self) -> float:
        return max((timed.end for rank_ops in self.timeline for timed in rank_ops), default=0.0)

    @property
    def busy(self) -> list[float]:
        return [sum(timed.end - timed.start for timed in rank_ops) for rank_ops in self.timeline]

    @property
    def bubble(self) -> list[float]:
        """Per rank: idle time as a fraction of the makespan."""
        makespan = self.makespan
        if makespan == 0:
            return [0.0] * len(self.timeline)
        return [(makespan - busy) / makespan for busy in self.busy]

    @property
    def peak_activations(self) -> list[float]:
        """Per rank: most micro-batches in flight at once, in units of L/D layers.

        A (pipe, stage, microbatch) is in flight from its F's start until its
        B (or W) ends; each counts D/S so that stages of different sizes compare.
        """
        weight = self.schedule.ranks / self.schedule.stages
        releasing = (OpType.BACKWARD, OpType.BACKWARD_WEIGHT)
        peaks = []
        for rank_ops in self.timeline:
            # Sort releases before acquisitions at the same instant.
            events = sorted(
                [(timed.start, 1) for timed in rank_ops if timed.op.type is OpType.FORWARD]
                + [(timed.end, -1) for timed in rank_ops if timed.op.type in releasing]
            )
            level = peak = 0
            for _, change in events:
                level += change
                peak = max(peak, level)
            peaks.append(peak * weight)
        return peaks

    @property
    def messages(self) -> int:
        """Point-to-point messages of one step (local hand-overs are not messages)."""
        return sum(
            lowered.send is not None and lowered.send.peer is not None
            for rank in range(self.schedule.ranks)
            for lowered in lower(self.schedule, rank)
        )

    @property
    def sync_starts(self) -> list[dict[str, float]]:
        """Per rank: when each chunk's gradient allreduce starts, keyed by its SYNC op."""
        return [
            {str(timed.op): timed.start for timed in rank_ops if timed.op.type is OpType.SYNC}
            for rank_ops in self.timeline
        ]


def simulate(
    schedule: Schedule, costs: OpCosts | None = None, scale_by_stage_size: bool = False
) -> Simulation:
    """Run `schedule` on paper. `scale_by_stage_size` multiplies compute costs by D/S,
    so schedules that cut the same model into more, smaller stages compare fairly."""
    costs = costs or OpCosts()
    costs.check_stages(schedule.stages)
    if scale_by_stage_size:
        costs = costs.scaled(schedule.ranks / schedule.stages)
    split = {
        (op.pipe, op.stage, op.microbatch)
        for rank_ops in schedule.ops
        for op in rank_ops
        if op.type is OpType.BACKWARD_INPUT
    }
    timeline: list[list[TimedOp]] = [[] for _ in schedule.ops]
    finished: dict[Op, tuple[float, int]] = {}  # op -> (end, rank)
    waiting: dict[Op, list[int]] = {}  # op -> ranks blocked on it
    blocked_on: dict[int, Op] = {}
    free_at = [0.0] * schedule.ranks
    ready = list(range(schedule.ranks))
    while ready:
        rank = ready.pop()
        rank_ops = schedule.ops[rank]
        while len(timeline[rank]) < len(rank_ops):
            op = rank_ops[len(timeline[rank])]
            needs = dependencies(op, schedule.stages, split)
            missing = next((need for need in needs if need not in finished), None)
            if missing is not None:
                waiting.setdefault(missing, []).append(rank)
                blocked_on[rank] = missing
                break
            start = free_at[rank]
            for need in needs:
                end, owner = finished[need]
                start = max(start, end + (costs.latency if owner != rank else 0.0))
            end = start + costs.duration(op)
            timeline[rank].append(TimedOp(op, start, end))
            free_at[rank] = end
            finished[op] = (end, rank)
            blocked_on.pop(rank, None)
            ready.extend(waiting.pop(op, []))
    if blocked_on:
        raise _deadlock(schedule, timeline, blocked_on)
    return Simulation(schedule, costs, timeline)


def _deadlock(
    schedule: Schedule, timeline: list[list[TimedOp]], stuck: dict[int, Op]
) -> ScheduleError:
    notes = {}
    for rank in sorted(stuck):
        step = len(timeline[rank])
        awaited = stuck[rank]
        where = schedule.placement.rank_of_chunk.get(awaited.chunk)
        holder = f"rank {where}" if where is not None else "no rank holds its stage"
        notes[(rank, step)] = (
            f"rank {rank} is stuck at step {step}, {schedule.ops[rank][step]}: "
            f"it waits for {awaited} ({holder})"
        )
    message = f"{schedule.kind} schedule deadlocks: " + "; ".join(notes.values())
    return ScheduleError(message, step_grid(schedule.ops, notes), tuple(notes))
