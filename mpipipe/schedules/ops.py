"""The op IR: what one rank does at one point of a pipeline schedule.

An op is (type, pipe, stage, microbatch). Its text form follows PyTorch's
pipelining action notation, `{stage}{type}{microbatch}` ("2F0", "1I3",
"0W1"); ops of the up pipe (pipe 1, bidirectional schedules only) carry a
`u` prefix ("u2F0"), and a SYNC op, which has no micro-batch, prints as
"{stage}SYNC" ("3SYNC", "u3SYNC").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from mpipipe.errors import UsageError


class OpType(StrEnum):
    FORWARD = "F"
    BACKWARD = "B"  # full backward: input gradient and weight gradient
    BACKWARD_INPUT = "I"  # input-gradient half of a backward
    BACKWARD_WEIGHT = "W"  # weight-gradient half of a backward
    SYNC = "SYNC"  # start the gradient allreduce of a chunk


F = OpType.FORWARD
B = OpType.BACKWARD
I = OpType.BACKWARD_INPUT  # noqa: E741 - the paper's name for it
W = OpType.BACKWARD_WEIGHT
SYNC = OpType.SYNC

_OP_PATTERN = re.compile(
    r"^(?P<pipe>[du]?)(?P<stage>\d+)(?P<type>SYNC|F|B|I|W)(?P<microbatch>\d*)$"
)


@dataclass(frozen=True)
class Op:
    type: OpType
    stage: int
    microbatch: int = -1  # -1 only for SYNC
    pipe: int = 0

    def __post_init__(self):
        if (self.type is SYNC) != (self.microbatch == -1):
            raise ValueError(f"{self.type.value} op with microbatch {self.microbatch}")

    @property
    def chunk(self) -> tuple[int, int]:
        """The model chunk this op runs on: (pipe, stage)."""
        return (self.pipe, self.stage)

    def __str__(self) -> str:
        prefix = "u" if self.pipe == 1 else ""
        if self.type is SYNC:
            return f"{prefix}{self.stage}SYNC"
        return f"{prefix}{self.stage}{self.type.value}{self.microbatch}"

    @classmethod
    def parse(cls, text: str) -> Op:
        match = _OP_PATTERN.match(text.strip())
        if not match:
            raise UsageError(
                f"cannot read op {text!r}: expected STAGE TYPE MICROBATCH such as '2F0', '1I3', "
                "'0W1', '3SYNC', with a 'u' prefix for the up pipe ('u2F0')"
            )
        op_type = OpType(match["type"])
        microbatch = match["microbatch"]
        if (op_type is SYNC) != (microbatch == ""):
            raise UsageError(f"cannot read op {text!r}: only SYNC ops have no micro-batch number")
        return cls(
            type=op_type,
            stage=int(match["stage"]),
            microbatch=int(microbatch) if microbatch else -1,
            pipe=1 if match["pipe"] == "u" else 0,
        )


def pipe_name(pipe: int) -> str:
    return "up" if pipe == 1 else "down"


def chunk_name(op: Op) -> str:
    """Where `op` runs, in words: 'stage 2 of the up pipe'."""
    return f"stage {op.stage} of the {pipe_name(op.pipe)} pipe"
