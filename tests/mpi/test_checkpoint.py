"""Checkpoints under MPI: exact resume, resume at another layout, both writers alike.

Each test runs the same training two ways, straight through and with a save
and a resume in between (in fresh trainers, possibly of another layout),
and compares the two.
"""

import shutil
import tempfile

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from mpipipe.backend import select_backend
from mpipipe.checkpoint.contents import assign_writers, holders_of
from mpipipe.plan import plan_run
from mpipipe.runtime.mpi_helpers import first_ranks
from mpipipe.trainer import Trainer

from tiny_runs import relative_difference, tiny_config, wait_for_every_rank

TOLERANCE = 1e-10


@pytest.fixture
def shared_dir():
    """One temporary folder that every rank sees (rank 0 makes and removes it)."""
    world = MPI.COMM_WORLD
    path = world.bcast(tempfile.mkdtemp(prefix="mpipipe-ckpt-") if world.Get_rank() == 0 else None)
    yield path
    wait_for_every_rank(world)
    if world.Get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)


def make_trainer(comm, schedule, pipeline, data_parallel, dtype="float64", **overrides):
    config = tiny_config("gpt", schedule, pipeline, data_parallel, runtime__dtype=dtype,
                         **overrides)
    plan = plan_run(config, comm.Get_size(), comm.Get_rank())
    return Trainer(plan, comm=comm, backend=select_backend("cpu", dtype), verbose=False)


def optimizer_arrays(trainer) -> list[np.ndarray]:
    return [np.array(array) for arrays in trainer.optimizer.state for array in arrays.values()]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("schedule", "pipeline", "data_parallel", "writer"), [
    pytest.param("bitpipe", 4, 1, "yes", id="bitpipe-4x1", marks=pytest.mark.mpi(min_size=4)),
    pytest.param("1f1b", 2, 2, "yes", id="1f1b-2x2", marks=pytest.mark.mpi(min_size=4)),
    pytest.param("bitpipe", 2, 1, "no", id="bitpipe-2x1-rank0-writer"),
    pytest.param("bitpipe", 4, 2, "yes", id="bitpipe-4x2", marks=pytest.mark.mpi(min_size=8)),
])
def test_save_and_resume_equals_training_straight_through(
    schedule, pipeline, data_parallel, writer, dtype, shared_dir
):
    comm = first_ranks(MPI.COMM_WORLD, pipeline * data_parallel)
    if comm is None:
        return

    steps, saved_at = 8, 4

    def trainer():
        return make_trainer(comm, schedule, pipeline, data_parallel, dtype, train__steps=steps,
                            checkpoint__parallel=writer)

    straight = trainer()
    straight_losses = [straight.train_step()["loss"] for _ in range(steps)]
    first = trainer()
    for _ in range(saved_at):
        first.train_step()
    path = f"{shared_dir}/step{saved_at}.h5"
    first.save_checkpoint(path)
    second = trainer()
    second.resume(path)
    assert second.step == saved_at
    resumed_losses = [second.train_step()["loss"] for _ in range(steps - saved_at)]

    assert resumed_losses == straight_losses[saved_at:]
    expected, actual = straight.store.host_params(), second.store.host_params()
    for key, value in expected.items():
        assert value.tobytes() == actual[key].tobytes(), key
    for saved, resumed in zip(optimizer_arrays(straight), optimizer_arrays(second), strict=True):
        assert saved.tobytes() == resumed.tobytes()
    assert second.optimizer.step_count == straight.optimizer.step_count
    comm.Free()


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize(("schedule", "pipeline", "data_parallel", "microbatches"), [
    pytest.param("1f1b", 2, 2, 4, id="1f1b-2x2"),
    pytest.param("1f1b", 1, 1, 8, id="one-rank"),
    pytest.param("1f1b", 4, 2, 4, id="1f1b-4x2", marks=pytest.mark.mpi(min_size=8)),
])
def test_checkpoint_of_bitpipe_resumes_at_another_layout(
    schedule, pipeline, data_parallel, microbatches, shared_dir
):
    path = f"{shared_dir}/bitpipe-step5.h5"
    world = first_ranks(MPI.COMM_WORLD, 4)
    comm = first_ranks(MPI.COMM_WORLD, pipeline * data_parallel)
    if world is not None:
        saver = make_trainer(world, "bitpipe", 4, 1, train__steps=8)
        for _ in range(5):
            saver.train_step()
        saver.save_checkpoint(path)
        uninterrupted = [saver.train_step()["loss"] for _ in range(3)]
        straight_params = world.gather(saver.store.host_params(), root=0)
        world.Free()
    wait_for_every_rank(MPI.COMM_WORLD)  # the file is complete before any rank resumes from it

    if comm is not None:
        resumed = make_trainer(comm, schedule, pipeline, data_parallel, train__steps=8,
                               parallel__microbatches=microbatches)
        resumed.resume(path)
        losses = [resumed.train_step()["loss"] for _ in range(3)]
        resumed_params = comm.gather(resumed.store.host_params(), root=0)
        if comm.Get_rank() == 0:
            assert relative_difference(losses, uninterrupted) < TOLERANCE, (losses, uninterrupted)
            expected = {key: value for params in straight_params for key, value in params.items()}
            seen = {key: value for params in resumed_params for key, value in params.items()}
            assert set(seen) == set(expected)
            for key, value in seen.items():
                assert relative_difference(value, expected[key]) < TOLERANCE, key
        comm.Free()


@pytest.mark.mpi(min_size=2)
def test_rank0_writer_and_parallel_writer_produce_the_same_file(shared_dir):
    comm = first_ranks(MPI.COMM_WORLD, 2)
    if comm is None:
        return
    trainer = make_trainer(comm, "bitpipe", 2, 1)
    for _ in range(2):
        trainer.train_step()
    paths = {}
    for parallel in (True, False):
        trainer.parallel_checkpoints = parallel
        paths[parallel] = trainer.save_checkpoint(f"{shared_dir}/{parallel}.h5").path
    if comm.Get_rank() == 0:
        with h5py.File(paths[True], "r") as one, h5py.File(paths[False], "r") as other:
            assert dict(one.attrs).keys() == dict(other.attrs).keys()
            for name, value in one.attrs.items():
                assert np.array_equal(value, other.attrs[name]), name
            names = []
            one.visititems(lambda name, item: names.append(name)
                           if isinstance(item, h5py.Dataset) else None)
            other_names = []
            other.visititems(lambda name, item: other_names.append(name)
                             if isinstance(item, h5py.Dataset) else None)
            assert names == other_names and len(names) > 0
            for name in names:
                assert one[name][()].tobytes() == other[name][()].tobytes(), name
                assert one[name].attrs["crc32"] == other[name].attrs["crc32"], name
            params = trainer.store.host_params()
            for (layer, param), value in params.items():
                assert one[f"model/{layer}/{param}"][()].tobytes() == value.tobytes()
    comm.Free()


@pytest.mark.mpi(min_size=4)
def test_writers_are_holders_and_share_the_bytes():
    comm = first_ranks(MPI.COMM_WORLD, 4)
    if comm is None:
        return
    trainer = make_trainer(comm, "bitpipe", 4, 1)
    shapes = trainer.store.layout.shapes
    holders = holders_of(comm.allgather(sorted(trainer.store.params)))
    assert set(holders) == set(shapes), "some parameter has no holder"
    sizes = {key: int(np.prod(shape)) for key, shape in shapes.items()}
    writers = assign_writers(holders, sizes)
    assert all(writers[key] in holders[key] for key in shapes)
    # BitPipe's mirror pairs hold disjoint sets of parameters: each pair shares its bytes.
    for group in {tuple(ranks) for ranks in holders.values()}:
        keys = [key for key in shapes if tuple(holders[key]) == group]
        loads = [sum(sizes[key] for key in keys if writers[key] == rank) for rank in group]
        assert len(group) == 2 and max(loads) - min(loads) <= max(sizes[key] for key in keys)
    comm.Free()
