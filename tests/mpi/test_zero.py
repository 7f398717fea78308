"""ZeRO-1 under MPI: sharded optimizer state trains as one process, at 1/R the bytes, and
its checkpoints are the unsharded run's.

Equivalence: three float64 AdamW steps with weight decay and clipping equal the
single-process reference to 1e-10, every copy of a parameter bitwise the same. Memory: the
optimizer state's bytes, counted from its arrays, are each bucket's unsharded bytes over
its R holders (up to the padding), and the holders' shards add up to one whole copy.
Checkpoints: a file saved by a ZeRO-1 run and saved again at once by a zero = 0 run that
resumed it is the same file, byte for byte, and the other way round.
"""

import h5py
import numpy as np
import pytest
from mpi4py import MPI
from test_checkpoint import make_trainer, shared_dir  # noqa: F401 (a fixture)

from mpipipe.layers.memory import live_bytes
from mpipipe.runtime.mpi_helpers import first_ranks

from tiny_runs import (
    assert_equals_one_process,
    pipelined_run,
    pipelined_trainer,
    relative_difference,
    tiny_config,
)

STEPS = 3
TOLERANCE = 1e-10
SCHEDULES = ["1f1b", "bitpipe", "zb-v"]


def layout_params():
    return [
        pytest.param(2, 2, id="2x2", marks=pytest.mark.mpi(min_size=4)),
        pytest.param(4, 2, id="4x2", marks=pytest.mark.mpi(min_size=8)),
    ]


@pytest.mark.parametrize(("pipeline", "data_parallel"), layout_params())
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_zero1_equals_single_process(schedule, pipeline, data_parallel):
    comm = first_ranks(MPI.COMM_WORLD, pipeline * data_parallel)
    if comm is None:
        return
    config = tiny_config("gpt", schedule, pipeline, data_parallel,
                         model__n_layer=max(8, 2 * pipeline), parallel__zero=1)
    config.optim.grad_clip = 0.05  # below every step's norm: the clip acts each step
    plan, rows, gathered = pipelined_run(config, comm, STEPS)
    losses = [row["loss"] for row in rows]
    assert all(rank_losses == losses for rank_losses in comm.allgather(losses))
    if comm.Get_rank() == 0:
        expected_norms = assert_equals_one_process(plan, rows, gathered, STEPS, TOLERANCE)
        assert all(norm > config.optim.grad_clip for norm in expected_norms)  # clipped
    comm.Free()


def state_bytes_by_bucket(trainer) -> dict[int, int]:
    """Bytes of the optimizer state arrays of each bucket, counted from the arrays."""
    found: dict[int, list] = {}
    for group, state in zip(trainer.optimizer.groups, trainer.optimizer.state, strict=True):
        found.setdefault(group.key.bucket, []).append(state)
    return {index: live_bytes(states) for index, states in found.items()}


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("schedule", ["1f1b", "bitpipe"])
def test_zero1_keeps_one_holders_share_of_the_optimizer_state(schedule):
    comm = first_ranks(MPI.COMM_WORLD, 4)
    if comm is None:
        return
    measured = {}
    for zero in (0, 1):
        config = tiny_config("gpt", schedule, 2, 2, parallel__zero=zero)
        trainer = pipelined_trainer(config, comm)
        trainer.train_step()
        measured[zero] = state_bytes_by_bucket(trainer)
        holders = {bucket.index: len(bucket.world_members) for bucket in trainer.store.buckets}
        trainer.finish()
    itemsize = np.dtype(np.float64).itemsize * 2  # AdamW: m and v
    for index, whole in measured[0].items():
        share = whole / holders[index]
        assert abs(measured[1].get(index, 0) - share) < holders[index] * itemsize, index
    assert sum(measured[1].values()) < sum(measured[0].values()) / 2 + 1024
    # The holders' shards of a bucket add up to exactly one whole copy.
    every = comm.allgather(measured)
    for index, whole in measured[0].items():
        assert sum(rank[1].get(index, 0) for rank in every
                   if index in rank[0]) == whole * 1, index
    comm.Free()


def datasets(path: str) -> dict[str, bytes]:
    with h5py.File(path, "r") as file:
        found = {}
        file.visititems(lambda name, item: found.__setitem__(name, item[()].tobytes())
                        if isinstance(item, h5py.Dataset) else None)
    return found


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(("saved_with", "resumed_with"), [(1, 0), (0, 1)])
def test_zero1_checkpoint_resumes_bitwise_in_the_other_setting(
    saved_with, resumed_with, precision, shared_dir  # noqa: F811 (the fixture)
):
    comm = first_ranks(MPI.COMM_WORLD, 4)
    if comm is None:
        return
    dtype = "float64" if precision == "fp32" else "float32"

    def trainer(zero):
        return make_trainer(comm, "bitpipe", 2, 2, dtype, parallel__zero=zero,
                            runtime__precision=precision, train__steps=4)

    first = trainer(saved_with)
    for _ in range(2):
        first.train_step()
    first.save_checkpoint(f"{shared_dir}/first.h5")
    straight = [first.train_step()["loss"] for _ in range(2)]
    second = trainer(resumed_with)
    second.resume(f"{shared_dir}/first.h5")
    second.save_checkpoint(f"{shared_dir}/again.h5")
    resumed = [second.train_step()["loss"] for _ in range(2)]
    if comm.Get_rank() == 0:
        saved, again = datasets(f"{shared_dir}/first.h5"), datasets(f"{shared_dir}/again.h5")
        assert saved.keys() == again.keys() and any(name.startswith("optim/m/") for name in saved)
        for name, data in saved.items():
            assert data == again[name], name
    assert relative_difference(resumed, straight) < (TOLERANCE if precision == "fp32" else 1e-5)
    first.finish()
    second.finish()
    comm.Free()
