"""PyTorch's schedule files (torch.distributed.pipelining, 2.13): their cells, read and written.

PyTorch writes one row per rank, no header, one action per cell, in two forms.
`compute_only` holds compute actions, `{stage}{F|B|I|W}{microbatch}` as in
mpipipe, empty cells for idle steps and, from GPipe and 1F1B, `{stage}REDUCE_GRAD`.
`compute_comms`, what its runtime executes, adds `{stage}UNSHARD` and
`{stage}RESHARD` (FSDP), `{stage}REDUCE_GRAD`, sends and receives
(`0SEND_F1`, `1RECV_F1`, `1SEND_B0`, `0RECV_B0`, each named by the stage of
the op that sends or receives it) and `(0F3;3B1)OVERLAP_F_B`. Read as:

    {s}REDUCE_GRAD          {s}SYNC
    ({a};{b})OVERLAP_F_B    a, then b (mpipipe has no overlap of compute)
    {s}UNSHARD, RESHARD     nothing (mpipipe keeps whole stages resident)
    SEND_*, RECV_*          checked against the lowering, then dropped

A file that lists any send or receive must list exactly the messages the
lowering of its compute ops implies, each send after the op that produces
it and each receive before the op that needs it; a file that lists none
gets them from the lowering. Their positions are not kept: mpipipe sends
right after the op and posts receives ahead of the ops that need them.

Writing gives the compute_only form that PyTorch's `_load_csv` reads. PyTorch
holds every stage on one rank, so a bidirectional schedule (two pipes, each
stage on two ranks) cannot be written; SYNCs are left out, since PyTorch's
runtime adds its own REDUCE_GRAD after each stage's last backward.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from mpipipe.errors import UsageError
from mpipipe.schedules.lowering import lower
from mpipipe.schedules.ops import Op, OpType
from mpipipe.schedules.schedule import Schedule

SEND_F, RECV_F, SEND_B, RECV_B = "SEND_F", "RECV_F", "SEND_B", "RECV_B"
_COMPUTE = (OpType.FORWARD, OpType.BACKWARD, OpType.BACKWARD_INPUT, OpType.BACKWARD_WEIGHT)
_MESSAGE = re.compile(
    r"^(?P<pipe>u?)(?P<stage>\d+)(?P<kind>SEND_F|RECV_F|SEND_B|RECV_B)(?P<mb>\d+)$"
)
_REDUCE_GRAD = re.compile(r"^(?P<pipe>u?)(?P<stage>\d+)REDUCE_GRAD$")
_SHARDING = re.compile(r"^u?\d+(?:UNSHARD|RESHARD)$")
_OVERLAP = re.compile(r"^\((?P<inner>[^()]*)\)OVERLAP_F_B$")
_NOTATION = (
    "expected STAGE TYPE MICROBATCH such as '2F0', '1I3', '0W1', '3SYNC' ('u2F0' on the up "
    "pipe), or PyTorch's '3REDUCE_GRAD', '(0F3;7B1)OVERLAP_F_B', '0SEND_F1', '1RECV_B0', "
    "'0UNSHARD', '0RESHARD'"
)


@dataclass(frozen=True)
class Message:
    """A send or receive as PyTorch's compute_comms files list it: '0SEND_F1', '3RECV_B0'."""

    kind: str  # SEND_F, RECV_F, SEND_B or RECV_B
    stage: int  # of the op, on this rank, that sends or receives it
    microbatch: int
    pipe: int = 0

    def __str__(self) -> str:
        return f"{'u' if self.pipe else ''}{self.stage}{self.kind}{self.microbatch}"

    @property
    def is_send(self) -> bool:
        return self.kind in (SEND_F, SEND_B)


def read_cell(text: str) -> list[Op | Message]:
    """The ops and messages one non-empty cell stands for (none for UNSHARD and RESHARD)."""
    text = text.strip()
    if _SHARDING.match(text):
        return []
    if match := _REDUCE_GRAD.match(text):
        return [Op(OpType.SYNC, int(match["stage"]), pipe=1 if match["pipe"] else 0)]
    if match := _MESSAGE.match(text):
        pipe = 1 if match["pipe"] else 0
        return [Message(match["kind"], int(match["stage"]), int(match["mb"]), pipe)]
    if match := _OVERLAP.match(text):
        ops = [_read_op(part, text) for part in match["inner"].split(";")]
        if any(op.type not in _COMPUTE for op in ops):
            raise UsageError(f"cannot read op {text!r}: OVERLAP_F_B joins compute ops (F, B, I, W)")
        return ops
    return [_read_op(text, text)]


def _read_op(text: str, cell: str) -> Op:
    try:
        return Op.parse(text)
    except UsageError:
        raise UsageError(f"cannot read op {cell!r}: {_NOTATION}") from None


def implied_messages(schedule: Schedule, rank: int) -> dict[Message, Op]:
    """The messages `rank` sends and receives (no local hand-overs), each with its op."""
    implied = {}
    for lowered in lower(schedule, rank):
        op = lowered.op
        forward = op.type is OpType.FORWARD
        for transfer, kind in ((lowered.send, SEND_F if forward else SEND_B),
                               (lowered.receive, RECV_F if forward else RECV_B)):
            if transfer is not None and transfer.peer is not None:
                implied[Message(kind, op.stage, op.microbatch, op.pipe)] = op
    return implied


def check_messages(
    schedule: Schedule, listed: list[list[tuple[Message, Op | None, str]]], source: str
) -> None:
    """Raise a one-line UsageError unless `listed` is every implied message, in a usable place.

    listed[rank] holds (message, the rank's op before it in the file or None,
    where it stands in the file).
    """
    if not any(listed):
        return
    missing = []
    for rank, rank_listed in enumerate(listed):
        implied = implied_messages(schedule, rank)
        step_of = {op: step for step, op in enumerate(schedule.ops[rank])}
        seen: set[Message] = set()
        for message, previous, where in rank_listed:
            if message in seen:
                raise UsageError(f"{source} {where}: {message} on rank {rank} is listed twice")
            seen.add(message)
            op = implied.get(message)
            if op is None:
                raise UsageError(
                    f"{source} {where}: {message} on rank {rank} is not a message of this "
                    f"schedule: {_why_not(schedule, rank, message)}"
                )
            after_op = previous is not None and step_of[op] <= step_of[previous]
            if message.is_send and not after_op:
                raise UsageError(
                    f"{source} {where}: {message} on rank {rank} comes before {op}, which "
                    "produces what it sends"
                )
            if not message.is_send and after_op:
                raise UsageError(
                    f"{source} {where}: {message} on rank {rank} comes after {op}, which needs "
                    "what it receives"
                )
        missing += [f"{message} on rank {rank}" for message in implied if message not in seen]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise UsageError(
            f"{source}: the file lists sends and receives but not {', '.join(missing[:3])}{more}; "
            "list every message the ops imply, or none (mpipipe derives them)"
        )


def _why_not(schedule: Schedule, rank: int, message: Message) -> str:
    forward = message.kind in (SEND_F, RECV_F)
    types = (OpType.FORWARD,) if forward else (OpType.BACKWARD, OpType.BACKWARD_INPUT)
    candidates = [Op(op_type, message.stage, message.microbatch, message.pipe) for op_type in types]
    op = next((op for op in candidates if op in schedule.ops[rank]), None)
    if op is None:
        return f"rank {rank} runs no {' or '.join(map(str, candidates))}"
    downstream = message.kind in (SEND_F, RECV_B)
    peer_stage = message.stage + 1 if downstream else message.stage - 1
    if not 0 <= peer_stage < schedule.stages:
        return f"{op} is at the {'last' if downstream else 'first'} stage"
    return f"stage {peer_stage} is on rank {rank} too, so {op} hands over in memory"


def to_torch_csv(schedule: Schedule) -> str:
    """The compute_only file PyTorch's `_load_csv` reads: one row of actions per rank."""
    if schedule.pipes > 1:
        raise UsageError(
            f"--format torch-csv: {schedule.kind} runs two pipes, every stage on two ranks, which "
            "PyTorch's pipelining cannot express (it holds each stage on one rank); write a "
            "one-pipe schedule, or use --format csv"
        )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for rank_ops in schedule.ops:
        writer.writerow([str(op) for op in rank_ops if op.type in _COMPUTE])
    return out.getvalue()
