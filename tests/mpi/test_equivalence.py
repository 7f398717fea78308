"""The central test: every schedule and layout equals one process on the whole batch.

In float64, three AdamW steps (with weight decay and global-norm clipping)
give the same per-step losses and final parameters as the single-process
reference, to 1e-10 relative; every copy of a parameter (BitPipe's and
Chimera's mirrors, data-parallel replicas, the tied embedding) is bitwise
the same as the others.
"""

import numpy as np
import pytest
from mpi4py import MPI

from mpipipe.runtime.mpi_helpers import first_ranks
from mpipipe.schedules import SCHEDULE_KINDS

from tiny_runs import (
    assert_equals_one_process,
    pipelined_run,
    tiny_config,
)

STEPS = 3
LAYOUTS = [(2, 1), (4, 1), (2, 2), (8, 1), (4, 2), (2, 4)]  # (pipeline, data parallel)
TOLERANCE = 1e-10


def blocks_for(pipeline: int) -> int:
    """Transformer blocks enough for every schedule's stages (up to 2 per pipeline rank)."""
    return max(8, 2 * pipeline)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize(("pipeline", "data_parallel"), [
    pytest.param(pipeline, data_parallel, id=f"{pipeline}x{data_parallel}",
                 marks=pytest.mark.mpi(min_size=pipeline * data_parallel))
    for pipeline, data_parallel in LAYOUTS
])
@pytest.mark.parametrize("kind", ["gpt", "bert"])
@pytest.mark.parametrize("schedule", SCHEDULE_KINDS)
def test_pipeline_equals_single_process(schedule, kind, pipeline, data_parallel):
    comm = first_ranks(MPI.COMM_WORLD, pipeline * data_parallel)
    if comm is None:
        return
    config = tiny_config(kind, schedule, pipeline, data_parallel,
                         model__n_layer=blocks_for(pipeline))
    plan, rows, gathered = pipelined_run(config, comm, STEPS)
    losses = [row["loss"] for row in rows]
    everywhere = comm.allgather(losses)
    assert all(rank_losses == losses for rank_losses in everywhere), "loss differs between ranks"
    if comm.Get_rank() == 0:
        assert_equals_one_process(plan, rows, gathered, STEPS, TOLERANCE)
    comm.Free()


@pytest.mark.mpi(min_size=2)
def test_training_changes_parameters_and_reduces_loss():
    """Guards the equivalence test against a vacuous pass: the steps do move the model."""
    comm = first_ranks(MPI.COMM_WORLD, 2)
    if comm is None:
        return
    config = tiny_config("gpt", "bitpipe", 2, 1)
    config.data.source = "stdlib"  # learnable text, unlike random tokens
    config.model.vocab_size = 256
    config.optim.lr = 1e-2
    config.train.steps = 8
    plan, rows, gathered = pipelined_run(config, comm, 8)
    if comm.Get_rank() == 0:
        initial = plan.model.init_params(config.train.seed)
        moved = [key for params in gathered for key in params
                 if not np.allclose(params[key], initial[key])]
        assert moved, "no parameter changed"
        assert rows[-1]["loss"] < rows[0]["loss"]
    comm.Free()

