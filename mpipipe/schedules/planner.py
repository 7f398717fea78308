"""Orders planned for given costs: the kinds whose order is computed rather than closed-form.

Each entry builds the kind's schedule for (ranks, microbatches, costs,
memory_cap) with candidates.py, its reference order (the paper's, as
build_schedule gives it) among the candidates. The other kinds keep their
reference order whatever the costs (chimera's comes from a unit-cost dry run).
"""

from __future__ import annotations

from collections.abc import Callable

from mpipipe.schedules.bitpipe import bitpipe_schedule
from mpipipe.schedules.bitpipe_zb import bitpipe_zb_schedule
from mpipipe.schedules.candidates import planned_schedule
from mpipipe.schedules.layouts import layout_of
from mpipipe.schedules.schedule import Schedule
from mpipipe.schedules.simulate import OpCosts
from mpipipe.schedules.zb_h1 import zb_h1_schedule
from mpipipe.schedules.zb_v import zb_v_schedule

Planner = Callable[[int, int, OpCosts, "float | None"], Schedule]


def _with_reference(
    kind: str, placement: str, split_backward: bool, reference: Callable[[int, int], Schedule]
) -> Planner:
    def planner(ranks: int, microbatches: int, costs: OpCosts, memory_cap: float | None):
        layout = layout_of(placement, ranks, microbatches, split_backward)
        fixed = [(f"{kind}'s reference order", reference(ranks, microbatches).ops)]
        return planned_schedule(kind, layout, costs, memory_cap, fixed)

    return planner


def order_depends_on_costs(kind: str, ranks: int, microbatches: int) -> bool:
    """Whether `kind`'s order at D = ranks, N = microbatches is computed for the costs: the
    planned kinds, except bitpipe for N <= D (one unit, its closed-form order)."""
    return kind in PLANNERS and not (kind == "bitpipe" and microbatches <= ranks)


PLANNERS: dict[str, Planner] = {
    "bitpipe": _with_reference("bitpipe", "bitpipe", False, bitpipe_schedule),
    "zb-h1": _with_reference("zb-h1", "1f1b", True, zb_h1_schedule),
    "zb-v": _with_reference("zb-v", "zb-v", True, zb_v_schedule),
    "bitpipe-zb": bitpipe_zb_schedule,
}
