"""Check that a schedule is complete, well placed and free of deadlock.

A valid schedule runs, for every micro-batch m on its pipe p and every
stage s, exactly one F(p, s, m) and either one B or one I and one W, each
on the rank that holds (p, s); a stage may run B for some micro-batches and
I and W for others. On every rank it runs exactly one SYNC per chunk it
holds, after that chunk's last backward. Then a dry run must finish
(`simulate` reports deadlocks).
"""

from __future__ import annotations

from collections import Counter

from mpipipe.schedules.grid import ScheduleError, step_grid
from mpipipe.schedules.ops import Op, OpType, chunk_name, pipe_name
from mpipipe.schedules.schedule import Schedule
from mpipipe.schedules.simulate import simulate

_SHOWN_PROBLEMS = 3


def validate(schedule: Schedule) -> Schedule:
    """Return `schedule` unchanged, or raise a ScheduleError saying what is wrong and where."""
    check_ops(schedule)
    simulate(schedule)
    return schedule


def check_ops(schedule: Schedule) -> None:
    """The structural checks of the module docstring, without running the schedule."""
    if len(schedule.ops) != schedule.ranks:
        raise ScheduleError(
            f"{schedule.kind} schedule has op lists for {len(schedule.ops)} ranks, "
            f"but {schedule.ranks} pipeline ranks"
        )
    pipe_of = _pipe_of_microbatch(schedule)
    # (cell, what is wrong); a cell (rank, None) is a rank's whole row (an op missing from it)
    problems: list[tuple[tuple[int, int | None] | None, str]] = []
    seen: dict[Op, tuple[int, int]] = {}
    for rank, rank_ops in enumerate(schedule.ops):
        for step, op in enumerate(rank_ops):
            problem = _op_problem(schedule, rank, op, pipe_of)
            if problem:
                problems.append(((rank, step), problem))
            if op in seen:
                first_rank, first_step = seen[op]
                problems.append(
                    ((rank, step), f"{op} runs twice (rank {first_rank} step {first_step}, "
                                   f"rank {rank} step {step})")
                )
            seen.setdefault(op, (rank, step))
    problems += _missing_problems(schedule, seen, pipe_of)
    problems += _sync_problems(schedule)
    if problems:
        shown = "; ".join(text for _, text in problems[:_SHOWN_PROBLEMS])
        more = len(problems) - _SHOWN_PROBLEMS
        suffix = f" (and {more} more problems)" if more > 0 else ""
        marks = {cell: text for cell, text in problems if cell is not None and cell[1] is not None}
        rows = [cell[0] for cell, _ in problems[:_SHOWN_PROBLEMS] if cell and cell[1] is None]
        raise ScheduleError(
            f"{schedule.kind} schedule is invalid: {shown}{suffix}",
            step_grid(schedule.ops, marks),
            tuple(marks),
            tuple(dict.fromkeys(rows)),
        )


def _op_problem(schedule: Schedule, rank: int, op: Op, pipe_of: dict[int, int]) -> str | None:
    """What is wrong with `op` where it stands on `rank`, if anything."""
    owner = schedule.placement.rank_of_chunk.get(op.chunk)
    if owner is None:
        return f"{op} on rank {rank}: no rank holds {chunk_name(op)}"
    if owner != rank:
        return f"{op} runs on rank {rank}, but {chunk_name(op)} is on rank {owner}"
    if op.type is OpType.SYNC:
        return None
    if not 0 <= op.microbatch < schedule.microbatches:
        return (
            f"{op} on rank {rank}: micro-batch {op.microbatch} is outside "
            f"0..{schedule.microbatches - 1}"
        )
    if pipe_of[op.microbatch] != op.pipe:
        pipe = pipe_name(pipe_of[op.microbatch])
        return f"{op} on rank {rank}: micro-batch {op.microbatch} entered the {pipe} pipe"
    return None


def _missing_problems(
    schedule: Schedule, seen: dict[Op, tuple[int, int]], pipe_of: dict[int, int]
) -> list:
    """Each (pipe, stage, micro-batch) needs its F and one B, or one I and one W, not both."""
    any_split = any(op.type is OpType.BACKWARD_INPUT for op in seen)
    any_whole = any(op.type is OpType.BACKWARD for op in seen)
    problems = []
    for microbatch in range(schedule.microbatches):
        pipe = pipe_of.get(microbatch, 0)
        for stage in range(schedule.stages):
            forward, whole, first_half, second_half = (
                Op(op_type, stage, microbatch, pipe)
                for op_type in (OpType.FORWARD, OpType.BACKWARD, OpType.BACKWARD_INPUT,
                                OpType.BACKWARD_WEIGHT)
            )
            halves = [op for op in (first_half, second_half) if op in seen]
            either = any_split and any_whole and whole not in seen and not halves
            if whole in seen or either:
                needed = [forward]
            elif halves or any_split:
                needed = [forward, first_half, second_half]
            else:
                needed = [forward, whole]
            problems += [
                (_row(schedule, op), f"{op} ({_describe(op)}) is missing {_from(schedule, op)}")
                for op in needed
                if op not in seen
            ]
            if whole in seen and halves:
                problems.append((seen[halves[0]], f"{whole} and {halves[0]} both run: a backward "
                                                  "is one B, or one I and one W"))
            if either:  # a schedule mixing B with I and W: either would do here
                problems.append((_row(schedule, whole),
                                 f"the backward of micro-batch {microbatch} at "
                                 f"{chunk_name(whole)} ({whole}, or {first_half} and "
                                 f"{second_half}) is missing {_from(schedule, whole)}"))
    return problems


def _from(schedule: Schedule, op: Op) -> str:
    holder = schedule.placement.rank_of_chunk.get(op.chunk)
    return f"from rank {holder}" if holder is not None else "(no rank holds that stage)"


def _row(schedule: Schedule, op: Op) -> tuple[int, None] | None:
    """The row of the rank an op is missing from, if some rank holds its chunk."""
    holder = schedule.placement.rank_of_chunk.get(op.chunk)
    return None if holder is None else (holder, None)


def _sync_problems(schedule: Schedule) -> list:
    backward_types = (OpType.BACKWARD, OpType.BACKWARD_INPUT, OpType.BACKWARD_WEIGHT)
    problems = []
    for rank, rank_ops in enumerate(schedule.ops):
        for pipe, stage in schedule.placement.chunks_on(rank):
            sync = Op(OpType.SYNC, stage, pipe=pipe)
            steps = [step for step, op in enumerate(rank_ops) if op == sync]
            last_backward = max(
                (
                    step
                    for step, op in enumerate(rank_ops)
                    if op.chunk == (pipe, stage) and op.type in backward_types
                ),
                default=-1,
            )
            if not steps:
                problems.append(
                    ((rank, None), f"rank {rank} never starts the gradient sync of "
                                   f"{chunk_name(sync)}: add {sync} after its last backward")
                )
            elif steps[0] < last_backward:
                problems.append(
                    ((rank, steps[0]), f"{sync} on rank {rank} comes before that chunk's last "
                                       f"backward {rank_ops[last_backward]} (step {last_backward})")
                )
    return problems


def _pipe_of_microbatch(schedule: Schedule) -> dict[int, int]:
    """Each micro-batch's pipe: the one most of its ops name (so one stray op stands out)."""
    votes: dict[int, Counter] = {}
    for rank_ops in schedule.ops:
        for op in rank_ops:
            if op.type is not OpType.SYNC:
                votes.setdefault(op.microbatch, Counter())[op.pipe] += 1
    return {
        microbatch: max(sorted(counter), key=counter.__getitem__)
        for microbatch, counter in votes.items()
    }


def _describe(op: Op) -> str:
    names = {
        OpType.FORWARD: "forward",
        OpType.BACKWARD: "backward",
        OpType.BACKWARD_INPUT: "input-gradient backward",
        OpType.BACKWARD_WEIGHT: "weight-gradient backward",
    }
    return f"{names[op.type]} of micro-batch {op.microbatch} at {chunk_name(op)}"
