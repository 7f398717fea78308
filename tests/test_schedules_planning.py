"""Orders planned for given costs: what they promise, checked by the simulator."""

import math

import pytest

from mpipipe.errors import UsageError
from mpipipe.schedules import (
    SCHEDULE_KINDS,
    build_schedule,
    can_run,
    plan,
    simulate,
    stage_count,
)
from mpipipe.schedules.building import make_schedule
from mpipipe.schedules.candidates import _MEMORY_RULES, _RULES, _soft_caps, _Timing
from mpipipe.schedules.layouts import layout_of
from mpipipe.schedules.planning import list_schedule
from mpipipe.schedules.simulate import OpCosts
from mpipipe.schedules.validate import validate

PROFILES = ["1,2,1", "1,1,0.5", "1,2,0.5", "1,3,1.5"]  # F,B,W: I = B - W
PLANNED = ["bitpipe-zb", "zb-v", "zb-h1", "bitpipe"]


def same_model(costs: OpCosts, kind: str, ranks: int) -> OpCosts:
    return costs.scaled(ranks / stage_count(kind, ranks))


@pytest.mark.parametrize("placement,split", [("bitpipe", True), ("bitpipe", False),
                                             ("zb-v", True), ("1f1b", True)])
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("latency", [0.0, 0.3])
def test_every_list_schedule_times_its_order_as_the_simulator(placement, split, profile, latency):
    # The planner times its candidates itself; the simulator must agree on each one.
    costs = OpCosts.parse(profile, latency).scaled(0.5)
    layout = layout_of(placement, 4, 6 if placement != "bitpipe" or split else 8, split)
    graph = layout.graph
    cap = layout.stages
    durations = graph.durations(costs)
    timing = _Timing.of(layout, costs)
    for _, rule, _ in _RULES:
        keys = [rule(op, op.microbatch, timing) for op in graph.ops]
        for _, reserve, paced in _MEMORY_RULES:
            for soft_cap in _soft_caps(cap):
                planned = list_schedule(graph, durations, latency, keys, cap, reserve, soft_cap,
                                        paced)
                if planned is None:
                    continue  # a stalled candidate is dropped, not timed
                schedule = make_schedule("x", 4, len(layout.pipe_of_microbatch),
                                         layout.rank_of_chunk, planned.ops(graph))
                simulation = simulate(validate(schedule), costs)
                assert simulation.makespan == planned.makespan
                assert max(simulation.peak_activations) * layout.stages / 4 <= cap


@pytest.mark.parametrize("kind", PLANNED)
def test_planning_for_the_costs_never_loses_to_the_reference_order(kind):
    for profile in PROFILES:
        costs = OpCosts.parse(profile)
        reference = simulate(build_schedule(kind, 4, 8), costs).makespan
        assert simulate(plan(kind, 4, 8, costs), costs).makespan <= reference


def test_zb_v_planned_for_a_short_weight_gradient():
    # The case: ZB-V's unit-cost order simulates 71.5 at I = 1.5, W = 0.5.
    costs = OpCosts.parse("1,2,0.5")
    assert simulate(build_schedule("zb-v", 4, 8), costs).makespan == 71.5
    planned = simulate(plan("zb-v", 4, 8, costs), costs).makespan
    assert planned < simulate(build_schedule("bitpipe", 4, 8), costs).makespan == 54


@pytest.mark.parametrize("ranks,microbatches", [(4, 4), (4, 8), (4, 16), (8, 8), (8, 16)])
@pytest.mark.parametrize("profile", PROFILES)
def test_bitpipe_zb_is_the_fastest_schedule(ranks, microbatches, profile):
    # Every kind that runs at this size, planned for the costs, on the same model (costs
    # scaled by D/S); the README's table (mpipipe bench schedules) adds N = 4D at D = 8.
    costs = OpCosts.parse(profile)
    makespans = {}
    for kind in SCHEDULE_KINDS:
        if not can_run(kind, ranks, microbatches):  # dualpipev needs N >= 2D
            continue
        scaled = same_model(costs, kind, ranks)
        makespans[kind] = simulate(plan(kind, ranks, microbatches, scaled), scaled).makespan
    flagship = makespans.pop("bitpipe-zb")
    assert flagship <= min(makespans.values()), makespans


@pytest.mark.parametrize("kind", PLANNED)
@pytest.mark.parametrize("memory_cap", [1, 2, 3, 4])
def test_memory_cap_holds_at_every_rank(kind, memory_cap):
    costs = OpCosts.parse("1,2,0.5")
    schedule = plan(kind, 4, 8, costs, memory_cap=memory_cap)
    assert max(simulate(schedule, costs).peak_activations) <= memory_cap
    assert schedule.options == {"costs": costs.to_text(), "memory_cap": memory_cap}


@pytest.mark.parametrize("kind,smallest", [("bitpipe-zb", "1"), ("zb-h1", "1"), ("zb-v", "1")])
def test_a_cap_no_order_fits_names_the_smallest(kind, smallest):
    with pytest.raises(UsageError) as caught:
        plan(kind, 4, 8, OpCosts(), memory_cap=0.5)
    message = str(caught.value)
    assert "\n" not in message and "0.5" in message and f"smallest cap is {smallest}" in message


def test_planning_is_a_function_of_its_inputs():
    costs = OpCosts.parse("1,3,1.5", latency=0.1)
    first = plan("bitpipe-zb", 8, 12, costs)
    second = plan("bitpipe-zb", 8, 12, OpCosts.from_text(costs.to_text()))
    assert first.ops == second.ops and first.options == second.options


def test_per_stage_costs():
    ranks, microbatches = 4, 8
    uniform = OpCosts(1, 2, backward_weight=0.5)
    same = OpCosts(per_stage=[(1, 1.5, 0.5)] * 8)
    schedule = plan("bitpipe-zb", ranks, microbatches, uniform)
    assert simulate(schedule, uniform).timeline == simulate(schedule, same).timeline
    # The last stage (rank 0's loss) twice as slow: the plan for it beats the uniform plan.
    slow_head = OpCosts(per_stage=[(1, 1.5, 0.5)] * 7 + [(2, 3, 1)])
    for_slow = plan("bitpipe-zb", ranks, microbatches, slow_head)
    assert simulate(for_slow, slow_head).makespan <= simulate(schedule, slow_head).makespan
    assert OpCosts.from_text(for_slow.options["costs"]) == slow_head
    with pytest.raises(UsageError, match="give 8 stages, but the schedule has 4"):
        simulate(build_schedule("1f1b", 4, 4), same)


@pytest.mark.parametrize("text", ["nan,2", "1,inf", "0,0", "1,2,nan", "a,b", "1;2"])
def test_costs_that_are_not_usable_numbers(text):
    with pytest.raises(UsageError) as caught:
        OpCosts.parse(text)
    assert "--cost" in str(caught.value) and "\n" not in str(caught.value)


def test_latency_must_be_finite():
    with pytest.raises(UsageError, match="--latency"):
        OpCosts.parse("1,2", latency=math.inf)
