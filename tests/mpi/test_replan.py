"""Switching the schedule between steps (`Engine.replan`) keeps computing the single
process's numbers, frees the old schedule's persistent receives, and refuses a schedule that
moves stages or layers."""

import gc

import numpy as np
import pytest
from mpi4py import MPI

from mpipipe.plan import plan_run
from mpipipe.runtime.mpi_helpers import first_ranks
from mpipipe.trainer import Trainer

from tiny_runs import (
    FLOAT64,
    assert_equals_one_process,
    tiny_config,
)

TOLERANCE = 1e-10
SCHEDULES = ["1f1b", "zb-h1", "gpipe"]  # one per step, all on the standard placement


def live_persistent_requests() -> int:
    gc.collect()
    return sum(
        1 for item in gc.get_objects()
        if isinstance(item, MPI.Prequest) and item != MPI.REQUEST_NULL
    )


@pytest.mark.mpi(min_size=2)
def test_a_step_after_replan_equals_the_single_process_and_frees_the_old_receives():
    comm = first_ranks(MPI.COMM_WORLD, 2)
    if comm is None:
        return
    plans = [
        plan_run(tiny_config("gpt", schedule, 2, 1), 2, comm.Get_rank()) for schedule in SCHEDULES
    ]
    outside = live_persistent_requests()  # other tests' engines, not closed
    trainer = Trainer(plans[0], comm=comm, backend=FLOAT64, verbose=False)
    rows = []
    for step, plan in enumerate(plans):
        if step:
            before = live_persistent_requests()
            old = len(trainer.engine.receive_plan)
            trainer.engine.replan(plan)
            new = len(trainer.engine.receive_plan)
            assert live_persistent_requests() == before - old + new
            assert trainer.engine.schedule.kind == plan.schedule.kind
        rows.append(trainer.train_step())
        assert trainer.engine.pending_requests().total == 0
    gathered = comm.gather(trainer.store.host_params(), root=0)
    trainer.finish()
    assert live_persistent_requests() == outside
    if comm.Get_rank() == 0:
        assert_equals_one_process(plans[0], rows, gathered, len(plans), TOLERANCE)
    comm.Free()


@pytest.mark.mpi(min_size=2)
def test_replan_refuses_a_schedule_that_moves_stages():
    comm = first_ranks(MPI.COMM_WORLD, 2)
    if comm is None:
        return
    plan = plan_run(tiny_config("gpt", "1f1b", 2, 1), 2, comm.Get_rank())
    trainer = Trainer(plan, comm=comm, backend=FLOAT64, verbose=False)
    interleaved = plan_run(tiny_config("gpt", "interleaved", 2, 1), 2, comm.Get_rank())
    with pytest.raises(ValueError, match="new ParamStore and Engine"):
        trainer.engine.replan(interleaved)
    row = trainer.train_step()  # the engine still runs its own schedule
    assert np.isfinite(row["loss"])
    trainer.finish()
    comm.Free()
