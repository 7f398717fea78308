"""parallel.costs in one process: the engine's op times, the measured costs computed from them,
the order chosen for those costs, and when a resumed run measures again."""

import numpy as np
import pytest
from mpi4py import MPI
from tiny_config import tiny_config

from mpipipe.backend import select_backend
from mpipipe.checkpoint.plan_record import PlanRecord
from mpipipe.config.schema import Config
from mpipipe.plan import plan_run
from mpipipe.replanning import COST_GRID, Replanning, choose_order, measured_costs
from mpipipe.runtime.op_costs import KINDS, OpTimes, cost_slot
from mpipipe.runtime.stage import LayerStage
from mpipipe.schedules import OpCosts, build_schedule, plan, simulate
from mpipipe.schedules.ops import Op, OpType
from mpipipe.trainer import Trainer

FLOAT64 = select_backend("cpu", "float64")


def replanning_config(schedule: str, costs: str = "measured", microbatches: int = 3) -> Config:
    return tiny_config(model__n_layer=8, parallel__schedule=schedule,
                       parallel__microbatches=microbatches, parallel__costs=costs)


class TickingStage(LayerStage):
    """The real layers; every F, I and W moves the clock on by 2, 3 and 5 seconds."""

    def __init__(self, clock, *args):
        super().__init__(*args)
        self.clock = clock

    def forward(self, x, ctx):
        self.clock[0] += 2.0
        return super().forward(x, ctx)

    def backward_input(self, dy, caches):
        self.clock[0] += 3.0
        return super().backward_input(dy, caches)

    def backward_weight(self, weight_caches):
        self.clock[0] += 5.0
        super().backward_weight(weight_caches)


def test_the_engine_times_every_op_by_stage_and_kind_with_its_op_clock():
    run_plan = plan_run(replanning_config("zb-h1"), 1, 0)
    clock = [0.0]
    trainer = Trainer(
        run_plan, comm=MPI.COMM_WORLD, backend=FLOAT64, verbose=False,
        stage_factory=lambda stage, indices, store: TickingStage(
            clock, run_plan.model.layers, indices, store),
        op_clock=lambda: clock[0],
    )
    trainer.train_step()
    row = trainer.engine.op_times.row()
    # One stage, three micro-batches: seconds of F, I, W, then their counts.
    assert row == [6.0, 9.0, 15.0, 3.0, 3.0, 3.0]
    trainer.finish()


def test_cost_slots_put_b_and_i_together_and_leave_syncs_out():
    assert cost_slot(Op(OpType.FORWARD, 2, 0)) == 2 * KINDS
    assert cost_slot(Op(OpType.BACKWARD, 2, 0)) == cost_slot(Op(OpType.BACKWARD_INPUT, 2, 1))
    assert cost_slot(Op(OpType.BACKWARD_WEIGHT, 0, 0)) == 2
    assert cost_slot(Op(OpType.SYNC, 1, -1)) < 0
    times = OpTimes(2)
    times.add(cost_slot(Op(OpType.BACKWARD_INPUT, 1, 0)), 0.5)
    times.add(cost_slot(Op(OpType.BACKWARD_INPUT, 1, 1)), 0.25)
    assert times.row() == [0, 0, 0, 0, 0.75, 0, 0, 0, 0, 0, 2, 0]
    times.begin_step()
    assert times.row() == [0.0] * 12


def rows_of(steps: list[list[tuple]], stages: int = 2) -> list[float]:
    """One rank's OpTimes rows from per step [(stage, kind, seconds, count), ...]."""
    rows = []
    for entries in steps:
        seconds, counts = [0.0] * (stages * KINDS), [0.0] * (stages * KINDS)
        for stage, kind, total, count in entries:
            seconds[stage * KINDS + kind] += total
            counts[stage * KINDS + kind] += count
        rows.append(seconds + counts)
    return rows


def test_measured_costs_are_medians_over_steps_of_every_holders_mean_in_forward_units():
    # Two ranks hold copies of both stages (mirrors). Step 0 is slow (warm-up), which the
    # median over the three steps leaves out; in step 1 the two copies of stage 1's forward
    # take 3 and 1 s, whose mean counts.
    steady = [(0, 1, 3.0, 2), (0, 2, 1.0, 2), (1, 1, 8.0, 2), (1, 2, 2.0, 2)]
    warm_up = [(0, 0, 40.0, 2), (0, 1, 6.0, 2), (0, 2, 2.0, 2), (1, 0, 40.0, 2),
               (1, 1, 8.0, 2), (1, 2, 2.0, 2)]
    rank0 = rows_of([warm_up, [(0, 0, 2.0, 2), (1, 0, 6.0, 2), *steady],
                     [(0, 0, 2.0, 2), (1, 0, 4.0, 2), *steady]])
    rank1 = rows_of([warm_up, [(0, 0, 2.0, 2), (1, 0, 2.0, 2), *steady],
                     [(0, 0, 2.0, 2), (1, 0, 4.0, 2), *steady]])
    costs, unit = measured_costs(np.asarray([rank0, rank1]), 2, split_backward=True)
    assert unit == 1.0  # stage 0's forward, the fastest
    assert costs.per_stage == ((1.0, 1.5, 0.5), (2.0, 4.0, 1.0))
    swapped, _ = measured_costs(np.asarray([rank1, rank0]), 2, split_backward=True)
    assert swapped == costs


def test_measured_costs_round_to_the_grid_and_an_unsplit_backward_is_all_b():
    rows = rows_of([[(0, 0, 3.0, 1), (0, 1, 7.0, 1), (1, 0, 4.0, 1), (1, 1, 10.0, 1)]])
    costs, unit = measured_costs(np.asarray([rows]), 2, split_backward=False)
    assert unit == 3.0
    grid = 1 / COST_GRID
    assert costs.per_stage == (
        (1.0, round(7 / 3 / grid) * grid, 0.0), (round(4 / 3 / grid) * grid, round(10 / 3 / grid)
                                                  * grid, 0.0))
    assert costs.duration(Op(OpType.BACKWARD, 1, 0)) == costs.per_stage[1][1]
    tiny_weight = rows_of([[(0, 0, 1.0, 1), (0, 1, 1.0, 1), (0, 2, 0.001, 1)]], stages=1)
    costs, _ = measured_costs(np.asarray([tiny_weight]), 1, split_backward=True)
    assert costs.per_stage == ((1.0, 1.0, grid),)  # one step of the grid, never zero


def test_the_order_planned_for_the_costs_replaces_the_unit_order_only_if_faster():
    unit = build_schedule("zb-v", 2, 4)
    uneven = OpCosts(per_stage=((1, 1.5, 0.5), (1, 1.5, 0.5), (1, 1.5, 0.5), (2, 3, 1)))
    choice = choose_order(unit, uneven)
    assert choice.switched and choice.makespan < choice.unit_makespan
    assert choice.schedule.digest() == plan("zb-v", 2, 4, uneven).digest()
    assert choice.unit_makespan == simulate(unit, uneven).makespan
    assert OpCosts.from_text(choice.schedule.options["costs"]) == uneven
    assert choice.schedule.options["measured"] is True
    even = OpCosts(forward=1, backward=2)  # zb-v's reference order is made for these
    kept = choose_order(unit, even)
    assert not kept.switched and kept.schedule.digest() == unit.digest()
    assert kept.makespan >= kept.unit_makespan
    assert kept.schedule.options["measured"] is True


def record(step: int, measured: bool, costs: str = "", source: str = "zb-h1") -> PlanRecord:
    return PlanRecord(step, source, "", costs, 1.0, measured)


@pytest.mark.parametrize(("saved_step", "replan_at"), [(0, 3), (2, 3), (3, 6), (7, 10)])
def test_a_resume_without_measured_costs_measures_until_plan_after_or_that_many_more(
    saved_step, replan_at
):
    run_plan = plan_run(replanning_config("zb-h1"), 1, 0)
    replanning = Replanning(run_plan)
    same, note = replanning.resume(record(saved_step, measured=False), run_plan)
    assert same is run_plan and note == ""
    assert replanning.measuring and replanning.replan_at == replan_at


def test_a_resume_chooses_the_order_again_from_the_saved_measured_costs():
    run_plan = plan_run(replanning_config("zb-h1"), 1, 0)
    costs = OpCosts(per_stage=((1.0, 2.0, 0.25),))
    replanning = Replanning(run_plan)
    resumed, note = replanning.resume(record(5, True, costs.to_text()), run_plan)
    assert not replanning.measuring and "not measured again" in note
    expected = choose_order(run_plan.schedule, costs, 1.0).schedule
    assert resumed.schedule.digest() == expected.digest()
    assert resumed.schedule.options == expected.options
    other = Replanning(run_plan)
    two_stages = OpCosts(per_stage=((1.0, 2.0, 0.25), (1.0, 2.0, 0.25)))
    same, note = other.resume(record(5, True, two_stages.to_text()), run_plan)
    assert same is run_plan and "measuring again" in note and other.replan_at == 8


def test_kinds_whose_order_does_not_depend_on_the_costs_say_so_once_and_never_measure():
    replanning = Replanning(plan_run(replanning_config("1f1b"), 1, 0))
    assert not replanning.measuring
    assert len(replanning.notes) == 1 and "not measured or re-planned" in replanning.notes[0]
    bitpipe = Replanning(plan_run(replanning_config("bitpipe", microbatches=2), 2, 0))
    assert not bitpipe.measuring and "bitpipe's order at D=2, N=2" in bitpipe.notes[0]
    assert Replanning(plan_run(replanning_config("bitpipe", microbatches=4), 2, 0)).measuring
    assert Replanning(plan_run(replanning_config("zb-h1", costs="unit"), 1, 0)).notes == []


def test_cost_ratios_plan_the_order_before_the_first_step():
    ratios = plan_run(replanning_config("zb-v", costs="1,2,0.5", microbatches=8), 4, 0)
    assert ratios.schedule.digest() == plan("zb-v", 4, 8, OpCosts.parse("1,2,0.5")).digest()
    assert ratios.schedule.digest() != build_schedule("zb-v", 4, 8).digest()
    unit = plan_run(replanning_config("zb-v", costs="unit", microbatches=8), 4, 0)
    assert unit.schedule.digest() == build_schedule("zb-v", 4, 8).digest()
    assert Replanning(ratios).notes == [] and not Replanning(ratios).measuring
    closed_form = plan_run(replanning_config("chimera", costs="1,2,0.5", microbatches=4), 4, 0)
    assert closed_form.schedule.digest() == build_schedule("chimera", 4, 4).digest()
    assert "not planned" in Replanning(closed_form).notes[0]
