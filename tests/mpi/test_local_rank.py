"""The node-local rank MPI gives when no launcher variable does."""

import pytest


@pytest.mark.mpi(min_size=2)
def test_shared_memory_split_gives_node_local_ranks():
    """All ranks of these tests share one node: the split's rank is the world rank."""
    from mpi4py import MPI

    from mpipipe.backend import shared_memory_local_rank

    world = MPI.COMM_WORLD
    assert shared_memory_local_rank(world) == world.Get_rank()
