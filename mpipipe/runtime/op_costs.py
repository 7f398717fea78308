"""What each stage's ops cost on this rank in one step: seconds and count per stage and kind.

The engine adds every F, B, I and W op's compute time (launch to the end of
its work, the interval the timeline and StepStats count) to one slot per
(stage, kind): kind 0 is F, 1 the backward the previous stage waits for (B,
or I when split), 2 W. A step's row is every slot's seconds, then every
slot's count; parallel.costs = 'measured' gathers the rows of its measured
steps from every rank (replanning.py).
"""

from __future__ import annotations

from mpipipe.schedules.ops import Op, OpType

KINDS = 3  # F, B or I, W
_KIND = {
    OpType.FORWARD: 0,
    OpType.BACKWARD: 1,
    OpType.BACKWARD_INPUT: 1,
    OpType.BACKWARD_WEIGHT: 2,
}
NO_SLOT = -1  # a SYNC has no compute


def cost_slot(op: Op) -> int:
    """The slot `op`'s time goes to: stage * KINDS + kind, or NO_SLOT for a SYNC."""
    kind = _KIND.get(op.type)
    return NO_SLOT if kind is None else op.stage * KINDS + kind


class OpTimes:
    """This rank's op times of the current step, by slot (cheap: two list adds per op)."""

    def __init__(self, stages: int):
        self.stages = stages
        self.begin_step()

    def begin_step(self) -> None:
        self.seconds = [0.0] * (self.stages * KINDS)
        self.counts = [0] * (self.stages * KINDS)

    def add(self, slot: int, seconds: float) -> None:
        self.seconds[slot] += seconds
        self.counts[slot] += 1

    def row(self) -> list[float]:
        """The step so far as numbers: every slot's seconds, then every slot's count."""
        return [*self.seconds, *map(float, self.counts)]
