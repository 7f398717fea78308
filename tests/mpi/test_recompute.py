"""Activation recomputation under every schedule: `attention` and `block` train
bitwise as `none` does, in float64 and float32, at 2x1 and 4x1, and equal one
process to 1e-10 in float64."""

import numpy as np
import pytest
from mpi4py import MPI

from mpipipe.backend import Backend
from mpipipe.models.model import build_model
from mpipipe.runtime.mpi_helpers import first_ranks
from mpipipe.schedules import SCHEDULE_KINDS

from tiny_runs import pipelined_run, reference_run, relative_difference, tiny_config

STEPS = 2
TOLERANCE = 1e-10
POLICIES = ("attention", "block")
PIPELINES = [
    pytest.param(2, marks=pytest.mark.mpi(min_size=2), id="2x1"),
    pytest.param(4, marks=pytest.mark.mpi(min_size=4), id="4x1"),
]


def run_with(policy: str, schedule: str, pipeline: int, dtype: str, comm):
    config = tiny_config("gpt", schedule, pipeline, 1, runtime__dtype=dtype,
                         runtime__recompute=policy)
    model = build_model(config.model, recompute=config.runtime.recompute)
    backend = Backend(xp=np, dtype=np.dtype(dtype).type, device="cpu")
    return pipelined_run(config, comm, STEPS, backend=backend, model=model)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("schedule", SCHEDULE_KINDS)
def test_recompute_trains_bitwise_as_none(schedule, pipeline, dtype):
    comm = first_ranks(MPI.COMM_WORLD, pipeline)
    if comm is None:
        return
    plan, rows, gathered = run_with("none", schedule, pipeline, dtype, comm)
    for policy in POLICIES:
        _, policy_rows, policy_gathered = run_with(policy, schedule, pipeline, dtype, comm)
        for key in ("loss", "grad_norm"):
            assert [row[key] for row in policy_rows] == [row[key] for row in rows], (policy, key)
        if comm.Get_rank() == 0:
            for params, policy_params in zip(gathered, policy_gathered, strict=True):
                assert params.keys() == policy_params.keys()
                for name, value in params.items():
                    assert np.array_equal(policy_params[name], value), (policy, name)
    if dtype == "float64" and comm.Get_rank() == 0:
        expected_losses, _, expected_params = reference_run(plan, STEPS)
        for step in range(STEPS):
            assert relative_difference(rows[step]["loss"], expected_losses[step]) < TOLERANCE
        for params in gathered:
            for name, value in params.items():
                assert relative_difference(value, expected_params[name]) < TOLERANCE, name
    comm.Free()
