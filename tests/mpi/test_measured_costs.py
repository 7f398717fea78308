"""parallel.costs = 'measured': timed steps, one re-plan, and a resume that chooses it again.

The ops' times come from a cost table, not from a clock on a loaded
machine: every stage computes for real (the layers, so the numbers can be
checked against one process), and each of its ops moves a fake clock, the
engine's op clock, on by the table's cost of that op. The LM head's stage
is twice as slow as the others, and weight gradients cost a third of a
backward. So the measured costs are known exactly; the test derives them
from the table itself, plans them with `plan`, and checks that the run
switched to that order, that the order is faster than the unit order under
those costs (the simulator's makespans, never a wall clock), that the steps
after the switch still equal one process in float64, and that a resume from
a checkpoint after the switch, whose stages report other costs, still
trains bitwise like the run that never stopped. The layout follows the world
size (2, 4 or 8 ranks).
"""

import shutil
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

from mpipipe.plan import plan_run
from mpipipe.runtime.mpi_helpers import first_ranks
from mpipipe.runtime.stage import LayerStage
from mpipipe.schedules import OpCosts, build_schedule, plan, simulate
from mpipipe.trainer import Trainer

from tiny_runs import (
    FLOAT64,
    assert_equals_one_process,
    tiny_config,
    wait_for_every_rank,
)

STEPS = 3
PLAN_AFTER = 1
TOLERANCE = 1e-10
KIND = "zb-v"
# (pipeline, data parallel) per world size: the largest that fits is used.
LAYOUTS = {2: (2, 1), 4: (4, 1), 8: (4, 2)}
# Seconds of the fake clock per op: F, I, W of a stage; the last stage (the LM head) twice.
BODY_COSTS = (1.0, 1.5, 0.5)
HEAD_FACTOR = 2.0


def layout() -> tuple[int, int]:
    size = MPI.COMM_WORLD.Get_size()
    return LAYOUTS[max(ranks for ranks in LAYOUTS if ranks <= size)]


class FakeClock:
    """The engine's op clock: it moves only when a stage's op says how long it took."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedLayerStage(LayerStage):
    """The real layers; each op moves the clock on by its (stage, kind) cost."""

    def __init__(self, layers, indices, store, clock: FakeClock, costs: tuple):
        super().__init__(layers, indices, store)
        self.clock, self.costs = clock, costs

    def forward(self, x, ctx):
        self.clock.now += self.costs[0]
        return super().forward(x, ctx)

    def backward_input(self, dy, caches):
        self.clock.now += self.costs[1]
        return super().backward_input(dy, caches)

    def backward_weight(self, weight_caches):
        self.clock.now += self.costs[2]
        super().backward_weight(weight_caches)


def stage_costs(stages: int, head_factor: float) -> list[tuple]:
    return [tuple(cost * (head_factor if stage == stages - 1 else 1.0) for cost in BODY_COSTS)
            for stage in range(stages)]


def measured_trainer(comm, pipeline, data_parallel, head_factor=HEAD_FACTOR, out_dir=None):
    config = tiny_config("gpt", KIND, pipeline, data_parallel, parallel__costs="measured",
                         parallel__plan_after=PLAN_AFTER, train__steps=STEPS)
    run_plan = plan_run(config, comm.Get_size(), comm.Get_rank())
    clock = FakeClock()
    costs = stage_costs(run_plan.schedule.stages, head_factor)
    layers = run_plan.model.layers

    def factory(stage, indices, store):
        return TimedLayerStage(layers, indices, store, clock, costs[stage])

    trainer = Trainer(run_plan, comm=comm, backend=FLOAT64, stage_factory=factory,
                      op_clock=clock, verbose=False, out_dir=out_dir)
    return trainer


@pytest.fixture
def shared_dir():
    """One temporary folder that every rank sees (rank 0 makes and removes it)."""
    world = MPI.COMM_WORLD
    path = world.bcast(tempfile.mkdtemp(prefix="mpipipe-measured-")
                       if world.Get_rank() == 0 else None)
    yield path
    wait_for_every_rank(world)
    if world.Get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.mpi(min_size=2)
def test_measured_costs_replan_to_a_faster_order_that_still_equals_one_process():
    pipeline, data_parallel = layout()
    comm = first_ranks(MPI.COMM_WORLD, pipeline * data_parallel)
    if comm is None:
        return
    trainer = measured_trainer(comm, pipeline, data_parallel)
    unit = build_schedule(KIND, pipeline, 2 * pipeline)
    assert trainer.engine.schedule.digest() == unit.digest()
    rows = [trainer.train_step() for _ in range(STEPS)]
    # The table's costs in units of the fastest forward, as the run must have measured them.
    expected = OpCosts(per_stage=tuple(
        tuple(cost / BODY_COSTS[0] for cost in costs)
        for costs in stage_costs(unit.stages, HEAD_FACTOR)
    ))
    planned = plan(KIND, pipeline, 2 * pipeline, expected)
    running = trainer.engine.schedule
    assert OpCosts.from_text(running.options["costs"]) == expected
    assert running.digest() == planned.digest() != unit.digest()
    assert simulate(running, expected).makespan < simulate(unit, expected).makespan
    assert [row["schedule_digest"] for row in rows] == [unit.digest()] * PLAN_AFTER + [
        planned.digest()] * (STEPS - PLAN_AFTER)
    gathered = comm.gather(trainer.store.host_params(), root=0)
    trainer.finish()
    if comm.Get_rank() == 0:
        assert_equals_one_process(trainer.plan, rows, gathered, STEPS, TOLERANCE)
    comm.Free()


@pytest.mark.mpi(min_size=2)
def test_resume_after_the_replan_chooses_the_saved_order_and_continues_bitwise(shared_dir):
    pipeline, data_parallel = layout()
    comm = first_ranks(MPI.COMM_WORLD, pipeline * data_parallel)
    if comm is None:
        return
    saved_at = PLAN_AFTER + 1
    straight = measured_trainer(comm, pipeline, data_parallel)
    straight_rows = [straight.train_step() for _ in range(STEPS)]
    first = measured_trainer(comm, pipeline, data_parallel)
    for _ in range(saved_at):
        first.train_step()
    path = f"{shared_dir}/step{saved_at}.h5"
    first.save_checkpoint(path)
    # Its stages now report even costs: measuring again would plan another order.
    second = measured_trainer(comm, pipeline, data_parallel, head_factor=1.0)
    second.resume(path)
    resumed_rows = [second.train_step() for _ in range(STEPS - saved_at)]

    assert second.engine.schedule.digest() == straight.engine.schedule.digest()
    assert not second.replanning.measuring
    assert [row["loss"] for row in resumed_rows] == [
        row["loss"] for row in straight_rows[saved_at:]]
    assert [row["schedule_digest"] for row in resumed_rows] == [
        row["schedule_digest"] for row in straight_rows[saved_at:]]
    expected, actual = straight.store.host_params(), second.store.host_params()
    for key, value in expected.items():
        assert value.tobytes() == actual[key].tobytes(), key
    for trainer in (straight, first, second):
        trainer.finish()
    comm.Free()


@pytest.mark.mpi(min_size=2)
def test_resume_before_the_replan_goes_on_measuring(shared_dir):
    pipeline, data_parallel = layout()
    comm = first_ranks(MPI.COMM_WORLD, pipeline * data_parallel)
    if comm is None:
        return
    first = measured_trainer(comm, pipeline, data_parallel)
    path = f"{shared_dir}/step0.h5"
    first.save_checkpoint(path)
    second = measured_trainer(comm, pipeline, data_parallel, head_factor=1.0)
    second.resume(path)
    assert second.replanning.measuring
    for _ in range(PLAN_AFTER):
        second.train_step()
    even = OpCosts(per_stage=tuple(
        tuple(cost / BODY_COSTS[0] for cost in costs)
        for costs in stage_costs(second.plan.schedule.stages, 1.0)
    ))
    assert not second.replanning.measuring
    assert OpCosts.from_text(second.plan.schedule.options["costs"]) == even
    assert np.isfinite(second.train_step()["loss"])
    for trainer in (first, second):
        trainer.finish()
    comm.Free()
