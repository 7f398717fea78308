"""Where every rank meets outside the step: one small record each, one verdict for all.

    verdict = rendezvous.agree(record, combine)   # collective, on every rank

Rank 0 collects every rank's record with point-to-point messages, so while
it waits it knows which ranks have not arrived; it combines them, and every
rank receives the verdict through a non-blocking broadcast. Every wait is
polled under the phase watchdog, so a rank that never arrives is named in
one line within runtime.timeout_s. Because each rank only hands in a record,
a rank that met an error (a full disk, a bad input) arrives at the same
meeting as the others and all of them learn it together: no rank is left in
a collective that another has skipped.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable

import numpy as np
from mpi4py import MPI

from mpipipe.runtime.phase_watchdog import PhaseWatchdog

_TAGS = 32767  # MPI guarantees tags up to this


def _listing(ranks: list[int]) -> str:
    shown = ", ".join(map(str, ranks[:8])) + (", ..." if len(ranks) > 8 else "")
    return f"rank{'s' if len(ranks) > 1 else ''} {shown}"


class Rendezvous:
    def __init__(self, comm, watchdog: PhaseWatchdog):
        """Collective: the meetings get a communicator of their own (no tag meets another's)."""
        self.comm = comm.Dup()
        self.watchdog = watchdog
        self.meetings = 0

    def agree(self, record, combine: Callable[[list], object] = list):
        """`combine(records of ranks 0, 1, ...)` as rank 0 computes it, on every rank."""
        comm, watchdog = self.comm, self.watchdog
        tag = self.meetings % _TAGS
        self.meetings += 1
        if comm.Get_rank() == 0:
            payload = pickle.dumps(combine(self._collect(record, tag)))
        else:
            sent = comm.isend(record, dest=0, tag=tag)
            payload = None
        size = np.array([0 if payload is None else len(payload)], dtype=np.int64)
        self._broadcast(size)
        data = bytearray(payload) if payload is not None else bytearray(int(size[0]))
        self._broadcast(data)
        if comm.Get_rank() != 0:
            watchdog.wait(lambda: sent.Test(), "waiting for rank 0 to take this rank's record")
        return pickle.loads(data)

    def barrier(self) -> None:
        """Every rank has reached this point (a meeting with no record)."""
        self.agree(None, lambda records: None)

    def _collect(self, record, tag: int) -> list:
        comm, size = self.comm, self.comm.Get_size()
        records: dict[int, object] = {0: record}
        status = MPI.Status()

        def arrival() -> bool:
            message = comm.improbe(MPI.ANY_SOURCE, tag, status)
            if message is None:
                return False
            records[status.Get_source()] = message.recv()
            return True

        while len(records) < size:
            self.watchdog.wait(arrival, lambda: (
                f"waiting for {_listing(sorted(set(range(size)) - set(records)))} (of {size}) "
                "to arrive"
            ))
        return [records[rank] for rank in range(size)]

    def _broadcast(self, buffer) -> None:
        request = self.comm.Ibcast(buffer, root=0)
        self.watchdog.wait(request.Test, "waiting for rank 0's verdict")

    def free(self) -> None:
        self.comm.Free()
