"""Pipeline schedules as data: generators, checks, dry runs and lowering.

    schedule = build_schedule("bitpipe", ranks=4, microbatches=8)   # validated
    timeline = simulate(schedule, OpCosts(forward=1, backward=2))
    schedule = plan("zb-v", 4, 8, OpCosts(1, 2, backward_weight=0.5))  # ordered for these costs
    my_ops = lower(schedule, rank)                                  # for the engine
    stages = partition_layers(costs, is_body, schedule.stages, "uniform")
"""

from __future__ import annotations

from mpipipe.errors import UsageError, did_you_mean
from mpipipe.schedules.bitpipe import bitpipe_schedule
from mpipipe.schedules.bitpipe_zb import bitpipe_zb_schedule
from mpipipe.schedules.chimera import chimera_schedule
from mpipipe.schedules.dualpipev import dualpipev_schedule
from mpipipe.schedules.gpipe import gpipe_schedule
from mpipipe.schedules.grid import ScheduleError
from mpipipe.schedules.interleaved import interleaved_schedule
from mpipipe.schedules.lowering import LoweredOp, Transfer, lower, max_tag, message_tag
from mpipipe.schedules.one_f_one_b import one_f_one_b_schedule
from mpipipe.schedules.partition import partition_layers
from mpipipe.schedules.planner import PLANNERS, order_depends_on_costs
from mpipipe.schedules.schedule import MAX_OPS, Placement, Schedule
from mpipipe.schedules.schedule_file import SCHEDULE_FILE_SUFFIX, read_schedule_file
from mpipipe.schedules.simulate import OpCosts, Simulation, simulate
from mpipipe.schedules.validate import validate
from mpipipe.schedules.zb_h1 import zb_h1_schedule
from mpipipe.schedules.zb_v import zb_v_schedule

__all__ = [
    "MAX_OPS",
    "SCHEDULE_FILE_SUFFIX",
    "SCHEDULE_KINDS",
    "LoweredOp",
    "OpCosts",
    "Placement",
    "Schedule",
    "ScheduleError",
    "Simulation",
    "Transfer",
    "build_schedule",
    "can_run",
    "check_constraints",
    "lower",
    "max_tag",
    "message_tag",
    "order_depends_on_costs",
    "partition_layers",
    "plan",
    "read_schedule_file",
    "simulate",
    "stage_count",
    "stages_reason",
    "validate",
]

# Each generator takes (ranks, microbatches); interleaved also takes chunks.
_GENERATORS = {
    "gpipe": gpipe_schedule,
    "1f1b": one_f_one_b_schedule,
    "interleaved": interleaved_schedule,
    "chimera": chimera_schedule,
    "bitpipe": bitpipe_schedule,
    "zb-h1": zb_h1_schedule,
    "zb-v": zb_v_schedule,
    "dualpipev": dualpipev_schedule,
    "bitpipe-zb": bitpipe_zb_schedule,
}
SCHEDULE_KINDS = tuple(_GENERATORS)

_EVEN_RANKS = ("chimera", "bitpipe", "zb-v", "bitpipe-zb")
_MICROBATCHES_PER_RANK = ("interleaved", "chimera", "bitpipe")  # N a multiple of D
_TWO_MICROBATCHES_PER_RANK = ("dualpipev",)  # N >= 2D


def stage_count(kind: str, ranks: int, chunks: int = 2) -> int:
    """How many stages `kind` cuts the model into on `ranks` pipeline ranks."""
    _check_kind(kind)
    if kind == "interleaved":
        return chunks * ranks
    if kind in ("bitpipe", "zb-v", "bitpipe-zb", "dualpipev"):
        return 2 * ranks
    return ranks


def stages_reason(kind: str, ranks: int, chunks: int = 2) -> str:
    """Where the stage count comes from: 'bitpipe with 4 pipeline ranks uses 2*4 stages'."""
    stages = stage_count(kind, ranks, chunks)
    count = f"{stages // ranks}*{ranks}" if stages != ranks else f"{ranks}"
    per_rank = f" and {chunks} chunks per rank" if kind == "interleaved" else ""
    ranks_text = f"{ranks} pipeline rank" + ("s" if ranks != 1 else "")
    stages_text = f"{count} stage" + ("s" if stages != 1 else "")
    return f"{kind} with {ranks_text}{per_rank} uses {stages_text}"


def check_constraints(kind: str, ranks: int, microbatches: int, chunks: int = 2) -> None:
    """Raise a one-line UsageError naming the first constraint (kind, D, N, v) that fails."""
    _check_kind(kind)
    if ranks < 1:
        raise UsageError(f"parallel.pipeline: needs at least 1 pipeline rank, got {ranks}")
    if microbatches < 1:
        raise UsageError(f"parallel.microbatches: needs at least 1 micro-batch, got {microbatches}")
    if chunks < 1:
        raise UsageError(f"parallel.chunks: needs at least 1 model chunk per rank, got {chunks}")
    if kind in _EVEN_RANKS and ranks % 2:
        raise UsageError(
            f"parallel.pipeline: {kind} needs an even number of pipeline ranks, got {ranks} "
            "(use 2, 4, 6, ...)"
        )
    if kind == "interleaved" and chunks < 2:
        raise UsageError(
            f"parallel.chunks: interleaved needs at least 2 model chunks per rank, got {chunks} "
            "(use 2, 3, 4, ... or parallel.schedule = '1f1b')"
        )
    stages = stage_count(kind, ranks, chunks)
    if stages * microbatches * 2 > MAX_OPS:
        most = MAX_OPS // (2 * stages)
        advice = (f"use at most {most} micro-batches per step" if most else
                  f"use fewer than {stages} stages (pipeline ranks, or chunks per rank)")
        raise UsageError(
            f"parallel.microbatches: {kind} with {stages} stages and {microbatches} "
            f"micro-batches means at least {stages * microbatches * 2} ops (a forward and a "
            f"backward per micro-batch and stage), more than the {MAX_OPS} a schedule may hold "
            f"(schedules.MAX_OPS); {advice}"
        )
    if kind == "bitpipe-zb" and microbatches < 2:
        raise UsageError(
            f"parallel.microbatches: bitpipe-zb needs at least 2 micro-batches (one per pipe), "
            f"got {microbatches} (use 2, 3, 4, ...)"
        )
    if kind in _MICROBATCHES_PER_RANK and microbatches % ranks:
        raise UsageError(
            f"parallel.microbatches: {kind} needs a multiple of the pipeline degree {ranks}, "
            f"got {microbatches} (use {ranks}, {2 * ranks}, {3 * ranks}, ...)"
        )
    if kind in _TWO_MICROBATCHES_PER_RANK and microbatches < 2 * ranks:
        raise UsageError(
            f"parallel.microbatches: {kind} needs at least twice the pipeline degree {ranks}, "
            f"got {microbatches} (use {2 * ranks} or more)"
        )


def can_run(kind: str, ranks: int, microbatches: int, chunks: int = 2) -> bool:
    """Whether `kind` accepts D = ranks and N = microbatches (see check_constraints)."""
    try:
        check_constraints(kind, ranks, microbatches, chunks)
    except UsageError:
        return False
    return True


def build_schedule(kind: str, ranks: int, microbatches: int, chunks: int = 2) -> Schedule:
    """Generate and validate the schedule of `kind` for D = ranks, N = microbatches."""
    check_constraints(kind, ranks, microbatches, chunks)
    extra = (chunks,) if kind == "interleaved" else ()
    return validate(_GENERATORS[kind](ranks, microbatches, *extra))


def plan(
    kind: str,
    ranks: int,
    microbatches: int,
    costs: OpCosts | None = None,
    memory_cap: float | None = None,
    chunks: int = 2,
) -> Schedule:
    """The schedule of `kind` ordered for `costs` (per op of one of its own stages; per-stage
    F, I, W and the message latency), holding at most `memory_cap` micro-batches of L/D
    layers per rank (default D). A deterministic function of its arguments, so every rank
    computes the same plan; the costs and cap are kept in the schedule's options. Kinds
    whose order does not depend on the costs (gpipe, 1f1b, interleaved, chimera) are
    build_schedule's."""
    check_constraints(kind, ranks, microbatches, chunks)
    if kind not in PLANNERS:
        return build_schedule(kind, ranks, microbatches, chunks)
    return validate(PLANNERS[kind](ranks, microbatches, costs or OpCosts(), memory_cap))


def _check_kind(kind: str) -> None:
    if kind not in SCHEDULE_KINDS:
        raise UsageError(
            f"parallel.schedule: unknown schedule {kind!r}{did_you_mean(kind, SCHEDULE_KINDS)} "
            f"(choose from {', '.join(SCHEDULE_KINDS)})"
        )
