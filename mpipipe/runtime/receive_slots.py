"""Which buffer every message of a step lands in, chosen once for all steps.

The engine starts each receive while the op `lookahead` ops before the one
that needs it computes (once that op's work is launched, so that MPI's copy
of a message that is already there overlaps it), keeping at most `window`
started and not finished. A message's data stays in use until its chunk's
backward is done (the B, or the W after an I). That pattern is the same in
every step, so it is played through once here, with a free list per buffer
kind, and each receive gets the buffer it will always use: the engine keeps
one persistent receive per message, started every step. A buffer is reused
only once the data it held is dead, the most recently freed first, so that
few buffers are touched and they stay in cache (a 4 MiB copy into one of
eight buffers in turn takes almost twice as long as into one of two); when
staged through host memory, a staging buffer is busy from the receive's
start until it is finished.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

ChunkKey = tuple[int, int, int]  # (pipe, stage, micro-batch)


@dataclass(frozen=True)
class ReceiveNeed:
    """One message the rank receives in a step."""

    position: int  # of the op that needs it
    kind: Hashable  # buffers of one kind are interchangeable (shape, and dtype where it varies)
    chunk: ChunkKey  # the chunk whose backward ends the data's use


@dataclass(frozen=True)
class SlotPlan:
    buffers: list[int]  # per receive: index of its buffer
    stagings: list[int]  # per receive: index of its staging buffer
    buffer_kinds: list[Hashable]  # per buffer: its kind
    staging_kinds: list[Hashable]  # per staging buffer: its kind


class _FreeLists:
    def __init__(self):
        self.kinds: list[Hashable] = []
        self.free: dict[Hashable, list[int]] = {}

    def take(self, kind: Hashable) -> int:
        free = self.free.get(kind)
        if free:
            return free.pop()
        self.kinds.append(kind)
        return len(self.kinds) - 1

    def give_back(self, slot: int) -> None:
        self.free.setdefault(self.kinds[slot], []).append(slot)


def due(needed_at: int, started: int, finished: int, position: int, window: int,
        lookahead: int) -> bool:
    """Whether the op at `position` (-1: the step's start) starts the next receive, needed by the
    op at `needed_at`, with `started` receives started and `finished` finished before it. The
    engine asks the same."""
    return needed_at <= position + lookahead and started - finished < window


def assign_slots(
    needs: list[ReceiveNeed], releases: dict[int, ChunkKey], window: int, lookahead: int
) -> SlotPlan:
    """Play one step through: `needs` in the order the ops need them, `releases[position]` the
    chunk whose backward the op at `position` completes."""
    if window < 1 or lookahead < 1:
        raise ValueError(
            f"the receive window and lookahead must be at least 1, not {window} and {lookahead}"
        )
    buffers, stagings = _FreeLists(), _FreeLists()
    buffer_of: list[int] = [-1] * len(needs)
    staging_of: list[int] = [-1] * len(needs)
    held: dict[ChunkKey, list[int]] = {}
    by_position = {need.position: index for index, need in enumerate(needs)}
    started = finished = 0

    def start_due(position: int) -> None:
        nonlocal started
        while started < len(needs) and due(
            needs[started].position, started, finished, position, window, lookahead
        ):
            need = needs[started]
            buffer_of[started] = buffers.take(need.kind)
            staging_of[started] = stagings.take(need.kind)
            started += 1

    start_due(-1)
    last = max([*by_position, *releases], default=-1)
    for position in range(last + 1):
        index = by_position.get(position)
        if index is not None:
            if index != finished or index >= started:
                raise ValueError("receives must be listed in the order their ops need them")
            finished += 1
            stagings.give_back(staging_of[index])
            held.setdefault(needs[index].chunk, []).append(buffer_of[index])
        start_due(position)
        chunk = releases.get(position)
        if chunk is not None:
            for slot in held.pop(chunk, []):
                buffers.give_back(slot)
    if held:
        raise ValueError(f"receive buffers of chunks {sorted(held)} are never released")
    return SlotPlan(buffer_of, staging_of, buffers.kinds, stagings.kinds)
