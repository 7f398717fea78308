"""Small MPI helpers shared by the tests, the benchmarks and scripts that drive the runtime."""

from __future__ import annotations

from mpi4py import MPI


def first_ranks(comm, count: int):
    """A communicator of `comm`'s first `count` ranks; None on the others."""
    rank = comm.Get_rank()
    sub = comm.Split(0 if rank < count else MPI.UNDEFINED, rank)
    return None if sub == MPI.COMM_NULL else sub
