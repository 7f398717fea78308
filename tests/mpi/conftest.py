"""pytest-mpi tests: run with `mpiexec -n 4 python -m pytest --with-mpi tests/mpi`.

A test that fails on one rank would leave the others waiting in a
collective, so a failure on any rank prints the report and aborts the whole
job: the run ends at once, non-zero, with the failing assertion shown.

A test whose layout needs N ranks says so with `pytest.mark.mpi(min_size=N)`
(on the test or on one of its parameters); pytest-mpi skips it, with that
reason, in a smaller world. In a larger world the ranks beyond its layout
have nothing to do: they wait for the others, asleep, before the next test.
`--min-ranks N` runs only the tests that need N ranks or more (the CI's
8-rank stage: the layouts the smaller worlds skip).
"""

import sys

import pytest
from mpi4py import MPI

from tiny_runs import wait_for_every_rank


def pytest_addoption(parser):
    parser.addoption("--min-ranks", type=int, default=0, metavar="N",
                     help="run only the tests whose layout needs at least N MPI ranks")


def ranks_needed(item) -> int:
    return max((mark.kwargs.get("min_size", 1) for mark in item.iter_markers(name="mpi")),
               default=1)


def pytest_collection_modifyitems(config, items):
    least = config.getoption("--min-ranks")
    if not least:
        return
    dropped = [item for item in items if ranks_needed(item) < least]
    items[:] = [item for item in items if ranks_needed(item) >= least]
    config.hook.pytest_deselected(items=dropped)


@pytest.fixture(autouse=True)
def every_rank_ends_the_test_together():
    yield
    wait_for_every_rank(MPI.COMM_WORLD)


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
