"""The measured timeline of a run: every op's start and end on every rank.

Times are `MPI.Wtime()` shifted onto rank 0's clock. `write_chrome_trace`
gathers all ranks' events to rank 0 and writes a Chrome trace (one track
per rank) that opens in Perfetto or chrome://tracing.
"""

from __future__ import annotations

import json

from mpi4py import MPI


def rank0_clock_offset(comm) -> float:
    """Seconds to add to this rank's Wtime to read rank 0's clock (barrier-aligned estimate)."""
    comm.Barrier()
    local = MPI.Wtime()
    reference = comm.bcast(local, root=0)
    return reference - local


class Timeline:
    def __init__(self, rank: int, clock_offset: float, max_steps: int):
        self.rank = rank
        self.clock_offset = clock_offset
        self.max_steps = max_steps
        self.events: list[dict] = []
        self.step = -1
        self.steps_recorded = 0
        self.recording = False  # whether this step's intervals are kept

    def begin_step(self, step: int) -> None:
        self.step = step
        self.steps_recorded += 1
        self.recording = self.steps_recorded <= self.max_steps and step >= 0

    def pause(self) -> None:
        """Record nothing until the next step begins (an evaluation between steps)."""
        self.recording = False

    def add(self, name: str, category: str, start: float, end: float) -> None:
        """Record one interval measured with MPI.Wtime on this rank."""
        if not self.recording:
            return
        self.events.append(
            {
                "name": name,
                "cat": category,
                "ph": "X",
                "ts": (start + self.clock_offset) * 1e6,
                "dur": (end - start) * 1e6,
                "pid": 0,
                "tid": self.rank,
                "args": {"step": self.step},
            }
        )


def write_chrome_trace(comm, timeline: Timeline, path: str) -> None:
    """Gather every rank's events and write them as one Chrome trace (rank 0 writes)."""
    gathered = comm.gather(timeline.events, root=0)
    if comm.Get_rank() != 0:
        return
    events = [event for rank_events in gathered for event in rank_events]
    if events:
        origin = min(event["ts"] for event in events)
        for event in events:
            event["ts"] -= origin
    names = [
        {"name": "thread_name", "ph": "M", "pid": 0, "tid": rank, "args": {"name": f"rank {rank}"}}
        for rank in range(comm.Get_size())
    ]
    with open(path, "w") as handle:
        json.dump({"traceEvents": names + events, "displayTimeUnit": "ms"}, handle)
