"""A schedule: for every pipeline rank, the ordered ops it runs in one step.

A schedule is plain data. Generators (one per file in this package) build
it from (kind, ranks, microbatches, options) without touching MPI or
arrays, so it can be validated, simulated and drawn anywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from mpipipe.schedules.ops import Op, OpType

# The most ops one schedule may hold: generating, validating and dry-running take
# about 50 us per op, so this bounds them to seconds (and the op lists to ~100 MB).
MAX_OPS = 200_000


@dataclass(frozen=True)
class Placement:
    """Which pipeline rank holds each (pipe, stage) chunk."""

    ranks: int
    stages: int
    pipes: int
    rank_of_chunk: dict[tuple[int, int], int]

    @classmethod
    def from_chunks(cls, ranks: int, rank_of_chunk: dict[tuple[int, int], int]) -> Placement:
        """The placement of `rank_of_chunk`, its stage and pipe counts read from its keys."""
        return cls(
            ranks=ranks,
            stages=1 + max(stage for _, stage in rank_of_chunk),
            pipes=1 + max(pipe for pipe, _ in rank_of_chunk),
            rank_of_chunk=rank_of_chunk,
        )

    def rank(self, pipe: int, stage: int) -> int:
        return self.rank_of_chunk[(pipe, stage)]

    def chunks_on(self, rank: int) -> list[tuple[int, int]]:
        """The (pipe, stage) chunks held by `rank`, in (pipe, stage) order."""
        return sorted(chunk for chunk, owner in self.rank_of_chunk.items() if owner == rank)

    def holders(self, stage: int) -> list[int]:
        """Every pipeline rank that holds a copy of `stage` (one per pipe)."""
        return sorted({self.rank_of_chunk[(pipe, stage)] for pipe in range(self.pipes)})


@dataclass
class Schedule:
    kind: str
    ranks: int  # D, pipeline ranks
    microbatches: int  # N, micro-batches per step (per data-parallel replica)
    placement: Placement
    ops: list[list[Op]]  # ops[rank] in execution order
    options: dict = field(default_factory=dict)  # e.g. {"chunks": 2} for interleaved

    @property
    def stages(self) -> int:
        return self.placement.stages

    @property
    def pipes(self) -> int:
        return self.placement.pipes

    @property
    def split_backward(self) -> bool:
        """True when some backwards are split into I and W ops (zero bubble, DualPipeV)."""
        return any(op.type is OpType.BACKWARD_INPUT for rank_ops in self.ops for op in rank_ops)

    def digest(self) -> str:
        """16 hex digits of the SHA-256 of every rank's ops in order: equal digests, same ops.

        Ops only: the kind, comments and spacing of a CSV do not change it.
        """
        text = "\n".join(",".join(str(op) for op in rank_ops) for rank_ops in self.ops)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def pipe_of_microbatch(self) -> dict[int, int]:
        """Which pipe carries each micro-batch (read from its first-stage forward)."""
        return {
            op.microbatch: op.pipe
            for rank_ops in self.ops
            for op in rank_ops
            if op.type is OpType.FORWARD and op.stage == 0
        }
