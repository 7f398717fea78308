"""Training with a schedule file: `parallel.schedule = "FILE.csv"`.

A CSV exported from a generator runs the generator's ops in the same order,
so its losses and final parameters are bitwise those of the built-in
schedule; a hand-edited file, PyTorch's files and an order the search found
run other orders and equal one process to 1e-10 in float64. A resume
refuses a schedule file that, by name, now holds other ops, and the ranks
refuse to start on different schedules. The layout follows the world size (2, 4 or 8 ranks).
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from mpipipe.errors import UsageError
from mpipipe.plan import plan_run
from mpipipe.runtime.mpi_helpers import first_ranks
from mpipipe.runtime.schedule_agreement import check_same_schedule
from mpipipe.schedules import build_schedule
from mpipipe.schedules.csv_io import to_csv
from mpipipe.trainer import Trainer

from tiny_runs import FLOAT64, pipelined_run, reference_run, relative_difference, tiny_config

STEPS = 3
TOLERANCE = 1e-10
TORCH_FIXTURES = Path(__file__).parent.parent / "fixtures" / "torch_schedules"
SEARCHED_FIXTURES = Path(__file__).parent.parent / "fixtures" / "searched_schedules"
# (pipeline, data parallel) per world size: the largest that fits is used.
LAYOUTS = {2: (2, 1), 4: (4, 1), 8: (4, 2)}


def layout() -> tuple[int, int]:
    size = MPI.COMM_WORLD.Get_size()
    return LAYOUTS[max(ranks for ranks in LAYOUTS if ranks <= size)]


@pytest.fixture
def shared_dir():
    """One temporary folder that every rank sees (rank 0 makes and removes it)."""
    world = MPI.COMM_WORLD
    path = world.bcast(tempfile.mkdtemp(prefix="mpipipe-csv-") if world.Get_rank() == 0 else None)
    yield Path(path)
    world.Barrier()
    if world.Get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)


def write_on_rank0(path: Path, text: str) -> None:
    """Write the file once; every rank of the world returns when it is there."""
    if MPI.COMM_WORLD.Get_rank() == 0:
        path.write_text(text)
    MPI.COMM_WORLD.Barrier()


def hand_edited(pipeline: int, microbatches: int) -> str:
    """1F1B as a person edits it: no comment, header or SYNCs; rank 0 runs every forward,
    then the backwards last micro-batch first (so its gradients add up in another order)."""
    schedule = build_schedule("1f1b", pipeline, microbatches)
    rows = [[str(op) for op in rank_ops if "SYNC" not in str(op)] for rank_ops in schedule.ops]
    forwards = [cell for cell in rows[0] if "F" in cell]
    rows[0] = forwards + [cell for cell in reversed(rows[0]) if "B" in cell]
    return "".join(", ".join(row) + "\n" for row in rows)


def check_equals_one_process(comm, plan, rows, gathered) -> None:
    losses = [row["loss"] for row in rows]
    if comm.Get_rank() != 0:
        return
    expected_losses, _, expected_params = reference_run(plan, STEPS)
    for step in range(STEPS):
        assert relative_difference(losses[step], expected_losses[step]) < TOLERANCE, step
    seen = set()
    for rank_params in gathered:
        for key, value in rank_params.items():
            seen.add(key)
            assert relative_difference(value, expected_params[key]) < TOLERANCE, key
    assert seen == set(expected_params)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("kind", ["1f1b", "zb-v", "bitpipe"])
def test_an_exported_schedule_trains_bitwise_like_its_generator(kind, shared_dir):
    pipeline, data_parallel = layout()
    path = shared_dir / f"{kind}.csv"
    write_on_rank0(path, to_csv(build_schedule(kind, pipeline, 2 * pipeline)))
    comm = first_ranks(MPI.COMM_WORLD, pipeline * data_parallel)
    if comm is None:
        return
    built_in = tiny_config("gpt", kind, pipeline, data_parallel)
    from_file = tiny_config("gpt", str(path), pipeline, data_parallel)
    plan, rows, gathered = pipelined_run(from_file, comm, STEPS)
    built_plan, built_rows, built_gathered = pipelined_run(built_in, comm, STEPS)
    assert plan.schedule.digest() == built_plan.schedule.digest()
    assert [row["loss"] for row in rows] == [row["loss"] for row in built_rows]
    assert [row["schedule"] for row in rows] == [str(path)] * STEPS
    if comm.Get_rank() == 0:
        for params, built_params in zip(gathered, built_gathered, strict=True):
            assert params.keys() == built_params.keys()
            assert all(np.array_equal(params[key], built_params[key]) for key in params)
    check_equals_one_process(comm, plan, rows, gathered)
    comm.Free()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize(
    "name",
    ["hand-edited", "ScheduleInterleavedZeroBubble_D{D}_N{N}_compute_comms.csv",
     "ScheduleDualPipeV_D{D}_N{N}_compute_only.csv"],
)
def test_a_hand_edited_or_pytorch_schedule_equals_one_process(name, shared_dir):
    pipeline, data_parallel = layout()
    microbatches = 2 * pipeline
    if name == "hand-edited":
        text = hand_edited(pipeline, microbatches)
    else:
        text = (TORCH_FIXTURES / name.format(D=pipeline, N=microbatches)).read_text()
    path = shared_dir / "schedule.csv"
    write_on_rank0(path, text)
    comm = first_ranks(MPI.COMM_WORLD, pipeline * data_parallel)
    if comm is None:
        return
    plan, rows, gathered = pipelined_run(tiny_config("gpt", str(path), pipeline, data_parallel),
                                         comm, STEPS)
    check_equals_one_process(comm, plan, rows, gathered)
    if name == "hand-edited":  # another order: equal to 1e-10, not bitwise
        built_in = tiny_config("gpt", "1f1b", pipeline, data_parallel)
        _, _, built_gathered = pipelined_run(built_in, comm, STEPS)
        if comm.Get_rank() == 0:
            assert any(not np.array_equal(params[key], built[key])
                       for params, built in zip(gathered, built_gathered, strict=True)
                       for key in params)
    comm.Free()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("model_kind", ["gpt", "bert"])
def test_a_searched_schedule_equals_one_process(model_kind):
    """An order `mpipipe schedule search --out` wrote for Chimera's placement with the
    backward split, which no built-in kind runs (the fixture folder's README has the
    commands)."""
    pipeline, data_parallel = layout()
    path = SEARCHED_FIXTURES / f"chimera-split-D{pipeline}-N{2 * pipeline}.csv"
    comm = first_ranks(MPI.COMM_WORLD, pipeline * data_parallel)
    if comm is None:
        return
    config = tiny_config(model_kind, str(path), pipeline, data_parallel)
    plan, rows, gathered = pipelined_run(config, comm, STEPS)
    assert plan.schedule.split_backward and plan.schedule.pipes == 2
    check_equals_one_process(comm, plan, rows, gathered)
    comm.Free()


def trainer_on(comm, schedule: str, pipeline: int) -> Trainer:
    config = tiny_config("gpt", schedule, pipeline, 1, train__steps=4)
    return Trainer(plan_run(config, comm.Get_size(), comm.Get_rank()), comm=comm,
                   backend=FLOAT64, verbose=False)


@pytest.mark.mpi(min_size=2)
def test_a_resume_refuses_an_edited_schedule_file_and_takes_a_renamed_one(shared_dir):
    pipeline = 2
    path, renamed = shared_dir / "mine.csv", shared_dir / "mine-gpipe.csv"
    write_on_rank0(path, to_csv(build_schedule("1f1b", pipeline, 2 * pipeline)))
    comm = first_ranks(MPI.COMM_WORLD, pipeline)
    straight_losses = None
    if comm is not None:
        straight = trainer_on(comm, "1f1b", pipeline)
        straight_losses = [straight.train_step()["loss"] for _ in range(4)]
        first = trainer_on(comm, str(path), pipeline)
        for _ in range(2):
            first.train_step()
        first.save_checkpoint(str(shared_dir / "step2.h5"))
    gpipe = to_csv(build_schedule("gpipe", pipeline, 2 * pipeline))
    write_on_rank0(path, gpipe)
    write_on_rank0(renamed, gpipe)
    if comm is None:
        return
    edited = trainer_on(comm, str(path), pipeline)
    with pytest.raises(UsageError) as refused:
        edited.resume(str(shared_dir / "step2.h5"))
    message = str(refused.value)
    assert f"was trained with parallel.schedule '{path}'" in message
    assert first.plan.schedule.digest() in message and edited.plan.schedule.digest() in message
    assert "\n" not in message
    going_on = trainer_on(comm, str(renamed), pipeline)
    going_on.resume(str(shared_dir / "step2.h5"))
    resumed_losses = [going_on.train_step()["loss"] for _ in range(2)]
    for resumed, expected in zip(resumed_losses, straight_losses[2:], strict=True):
        assert relative_difference(resumed, expected) < TOLERANCE
    comm.Free()


@pytest.mark.mpi(min_size=2)
def test_ranks_that_read_different_schedules_all_refuse_to_start():
    comm = first_ranks(MPI.COMM_WORLD, 2)
    if comm is None:
        return
    same = plan_run(tiny_config("gpt", "1f1b", 2, 1), 2, comm.Get_rank())
    check_same_schedule(comm, same)
    kind = "1f1b" if comm.Get_rank() == 0 else "gpipe"
    different = plan_run(tiny_config("gpt", kind, 2, 1), 2, comm.Get_rank())
    with pytest.raises(UsageError) as caught:
        check_same_schedule(comm, different)
    assert "the ranks read different schedules (rank 0 ops " in str(caught.value)
    assert same.schedule.digest() in str(caught.value)
    comm.Free()
