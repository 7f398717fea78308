"""pytest-mpi tests: run with `mpiexec -n 4 python -m pytest --with-mpi tests/mpi`.

A test that fails on one rank would leave the others waiting in a
collective, so a failure on any rank prints the report and aborts the whole
job: the run ends at once, non-zero, with the failing assertion shown.
"""

import sys

import pytest
from mpi4py import MPI


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and MPI.COMM_WORLD.Get_size() > 1:
        rank = MPI.COMM_WORLD.Get_rank()
        print(
            f"\n[rank {rank}] FAILED {item.nodeid}\n{report.longreprtext}\n",
            file=sys.stderr,
            flush=True,
        )
        MPI.COMM_WORLD.Abort(1)
