"""MPI helpers of the benchmarks: waiting that leaves the cores free, timing a message.

Helpers the tests share with the benchmarks are in mpipipe.runtime.mpi_helpers.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

IDLE_POLL_S = 2e-3


def idle_barrier(comm) -> None:
    """A barrier that sleeps while it waits, so waiting ranks leave the cores to working ones."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(IDLE_POLL_S)


def one_way_seconds(comm, nbytes: int, repeats: int = 20) -> float:
    """One-way time of an `nbytes` message between ranks 0 and 1: half the fastest of
    `repeats` round trips, the transfer's own time (on a shared machine other processes only
    ever add to it; their median there can be ten times the transfer).

    Every rank of `comm` calls it; ranks other than 0 and 1 sleep meanwhile.
    """
    rank = comm.Get_rank()
    if rank > 1:
        idle_barrier(comm)
        return float(comm.bcast(None, root=0))
    buffer = np.zeros(max(1, nbytes // 4), dtype=np.float32)
    peer = 1 - rank
    trips = []
    for _ in range(repeats + 1):
        start = MPI.Wtime()
        if rank == 0:
            comm.Send(buffer, dest=peer, tag=7)
            comm.Recv(buffer, source=peer, tag=7)
        else:
            comm.Recv(buffer, source=peer, tag=7)
            comm.Send(buffer, dest=peer, tag=7)
        trips.append(MPI.Wtime() - start)
    seconds = min(trips[1:]) / 2
    idle_barrier(comm)
    return float(comm.bcast(seconds, root=0))
