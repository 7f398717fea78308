"""Lower a rank's ops to what it must receive before each op and send after it.

A forward of (p, s, m) receives the activation across boundary s-1 from
the rank holding (p, s-1) and sends its output across boundary s to the
rank holding (p, s+1); a backward (B or I) receives the gradient across
boundary s and sends one across boundary s-1. Boundary b lies between stage
b and stage b+1. When both sides of a boundary sit on one rank, the
transfer is a local hand-over (`peer` None) and no message is sent.

Tags encode (micro-batch, pipe, boundary, direction) and are unique among
the messages of one step, so a message can never match the wrong receive.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpipipe.schedules.ops import Op, OpType
from mpipipe.schedules.schedule import Schedule

ACTIVATION, GRADIENT = "activation", "gradient"
_DIRECTIONS = (ACTIVATION, GRADIENT)  # tag direction 0 and 1


@dataclass(frozen=True)
class Transfer:
    direction: str  # "activation" or "gradient"
    pipe: int
    boundary: int  # between stage `boundary` and `boundary + 1`
    microbatch: int
    peer: int | None  # pipeline rank on the other side; None = local hand-over
    tag: int


@dataclass(frozen=True)
class LoweredOp:
    op: Op
    receive: Transfer | None  # what must arrive before the op runs
    send: Transfer | None  # what the op produces for another stage


def message_tag(
    pipe: int, boundary: int, microbatch: int, direction: int, stages: int, pipes: int
) -> int:
    """Tag of one message; direction 0 is an activation, 1 a gradient."""
    boundaries = max(stages - 1, 1)
    return ((microbatch * pipes + pipe) * boundaries + boundary) * 2 + direction


def max_tag(schedule: Schedule) -> int:
    """The largest tag `schedule` uses, to compare with MPI.TAG_UB."""
    return message_tag(
        schedule.pipes - 1,
        max(schedule.stages - 2, 0),
        schedule.microbatches - 1,
        1,
        schedule.stages,
        schedule.pipes,
    )


def lower(schedule: Schedule, rank: int) -> list[LoweredOp]:
    """`rank`'s ops in order, each with its receive and send (None where there is none)."""
    placement = schedule.placement
    last_stage = schedule.stages - 1

    def transfer(direction: str, op: Op, boundary: int, peer_stage: int) -> Transfer:
        peer = placement.rank(op.pipe, peer_stage)
        return Transfer(
            direction=direction,
            pipe=op.pipe,
            boundary=boundary,
            microbatch=op.microbatch,
            peer=None if peer == rank else peer,
            tag=message_tag(
                op.pipe,
                boundary,
                op.microbatch,
                _DIRECTIONS.index(direction),
                schedule.stages,
                schedule.pipes,
            ),
        )

    lowered = []
    for op in schedule.ops[rank]:
        receive = send = None
        if op.type is OpType.FORWARD:
            if op.stage > 0:
                receive = transfer(ACTIVATION, op, op.stage - 1, op.stage - 1)
            if op.stage < last_stage:
                send = transfer(ACTIVATION, op, op.stage, op.stage + 1)
        elif op.type in (OpType.BACKWARD, OpType.BACKWARD_INPUT):
            if op.stage < last_stage:
                receive = transfer(GRADIENT, op, op.stage, op.stage + 1)
            if op.stage > 0:
                send = transfer(GRADIENT, op, op.stage - 1, op.stage - 1)
        lowered.append(LoweredOp(op, receive, send))
    return lowered
