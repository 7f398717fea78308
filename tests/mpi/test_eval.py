"""Evaluation through the pipeline equals one process's forward over the held-out batches.

In float64, after one training step, the held-out loss of every layout
(2x1, 4x1, 2x2) and of schedules with full and with split backwards equals
the single-process reference's loss over the same held-out micro-batches to
1e-10 relative, and every rank knows it.
"""

import pytest
from mpi4py import MPI

from mpipipe.runtime.mpi_helpers import first_ranks

from tiny_runs import (
    pipelined_trainer,
    reference_loss,
    reference_run,
    relative_difference,
    tiny_config,
)

LAYOUTS = [(2, 1), (4, 1), (2, 2)]  # (pipeline, data parallel)
TOLERANCE = 1e-10


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: f"{layout[0]}x{layout[1]}")
@pytest.mark.parametrize("kind", ["gpt", "bert"])
@pytest.mark.parametrize("schedule", ["1f1b", "bitpipe", "zb-v"])
def test_pipelined_eval_loss_equals_single_process(schedule, kind, layout):
    pipeline, data_parallel = layout
    comm = first_ranks(MPI.COMM_WORLD, pipeline * data_parallel)
    if comm is None:
        return
    config = tiny_config(kind, schedule, pipeline, data_parallel, data__eval_fraction=0.1,
                         train__eval_batches=2)
    trainer = pipelined_trainer(config, comm)
    trainer.train_step()
    loss = trainer.evaluate()
    assert comm.allgather(loss) == [loss] * comm.Get_size(), "eval loss differs between ranks"
    assert trainer.engine.pending_requests().total == 0, "evaluation left requests behind"
    if comm.Get_rank() == 0:
        plan = trainer.plan
        _, _, params = reference_run(plan, 1)
        expected = reference_loss(plan.model, params, plan.held_out.all_samples())
        assert relative_difference(loss, expected) < TOLERANCE
    comm.Free()
