"""The planner's prediction against what the ranks measure: for every schedule at D = 2 and 4
and two model sizes, each rank's predicted peak (parameters, gradients, optimizer state, peak
activation caches, message buffers) within 15% of the peak its metrics row records, and the
activation caches alone within 15% too."""

import numpy as np
import pytest
from mpi4py import MPI

from mpipipe.backend import Backend
from mpipipe.memory_plan import predict_memory
from mpipipe.runtime.mpi_helpers import first_ranks
from mpipipe.schedules import SCHEDULE_KINDS

from tiny_runs import pipelined_run, tiny_config

STEPS = 1
TOLERANCE = 0.15
PIPELINES = [
    pytest.param(2, marks=pytest.mark.mpi(min_size=2), id="D2"),
    pytest.param(4, marks=pytest.mark.mpi(min_size=4), id="D4"),
]
# Two sizes: the small one's state and activations are alike; the wider one's activations
# (longer sequences, more micro-batch rows) dominate.
MODELS = {
    "d16-t8": {"model__d_model": 16, "model__seq_len": 8},
    "d32-t32": {"model__d_model": 32, "model__seq_len": 32, "data__microbatch_size": 4},
}
FLOAT32 = Backend(xp=np, dtype=np.float32, device="cpu")


def ratio(predicted: int, measured: int) -> float:
    return predicted / measured


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("schedule", SCHEDULE_KINDS)
def test_predicted_peak_is_within_15_percent_of_the_measured(schedule, pipeline, model):
    comm = first_ranks(MPI.COMM_WORLD, pipeline)
    if comm is None:
        return
    config = tiny_config("gpt", schedule, pipeline, 1, runtime__dtype="float32",
                         **MODELS[model])
    predicted = predict_memory(config, pipeline)
    _, rows, _ = pipelined_run(config, comm, STEPS, backend=FLOAT32)
    if comm.Get_rank() == 0:
        row = rows[-1]
        for rank, expected in enumerate(predicted.ranks):
            measured, cached = row["memory_bytes"][rank], row["activation_bytes"][rank]
            print(f"memory-plan | {schedule} | {pipeline} | {model} | {rank} | "
                  f"{expected.total} | {measured} | {ratio(expected.total, measured):.3f} | "
                  f"{expected.activations} | {cached} | "
                  f"{ratio(expected.activations, cached):.3f}")
            assert abs(ratio(expected.total, measured) - 1) <= TOLERANCE, (rank, expected)
            assert abs(ratio(expected.activations, cached) - 1) <= TOLERANCE, (rank, expected)
    comm.Free()


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("schedule", ["1f1b", "bitpipe"])
def test_zero_1_predicted_peak_is_within_15_percent_of_the_measured(schedule, precision):
    """2 x 2 with the optimizer state (and fp16's masters) sharded: every world rank."""
    comm = first_ranks(MPI.COMM_WORLD, 4)
    if comm is None:
        return
    config = tiny_config("gpt", schedule, 2, 2, runtime__dtype="float32", parallel__zero=1,
                         runtime__precision=precision, **MODELS["d16-t8"])
    predicted = predict_memory(config, 4)
    _, rows, _ = pipelined_run(config, comm, STEPS, backend=FLOAT32)
    if comm.Get_rank() == 0:
        for world_rank, measured in enumerate(rows[-1]["memory_bytes"]):
            expected = predicted.ranks[world_rank % 2]  # replica-major: replica * D + pipe rank
            assert abs(ratio(expected.total, measured) - 1) <= TOLERANCE, (world_rank, expected,
                                                                          measured)
    comm.Free()
