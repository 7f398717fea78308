"""Every schedule against the search's best order, and every schedule's bubble: simulated only.

For every D, N = k·D and cost profile F,B,W (I = B − W), on the same model
(costs scaled by D/S): each kind planned for those costs and simulated
with them, and CP-SAT's best order and proven lower bound for BitPipe's
placement with the backward split (bitpipe-zb's yardstick) and without
(plain bitpipe's), at the memory cap of D micro-batches of L/D layers. The
searches go through the bench's search cache (search_cache.py), which the
emulated part fills with the same ones; without OR-Tools the table has the
makespans alone.

The bubble table is `mpipipe schedule all -D 8 -N 8 16 32 --cost 1,2
--same-model`: each kind's mean bubble, its computed order planned for
those costs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from mpipipe.bench.cost_profiles import TABLE_PROFILES
from mpipipe.bench.search_cache import SearchCache, SearchFigures, available, same_model_costs
from mpipipe.schedules import SCHEDULE_KINDS, can_run, plan, simulate, stage_count
from mpipipe.schedules.simulate import OpCosts


@dataclass
class ScheduleTableSettings:
    ranks: list[int] = field(default_factory=lambda: [4, 8])
    microbatch_multiples: list[int] = field(default_factory=lambda: [1, 2, 4])
    profiles: list[str] = field(default_factory=lambda: list(TABLE_PROFILES))
    time_limit_s: float = 20.0  # per search
    workers: int = 2
    bubble_ranks: int = 8
    bubble_multiples: list[int] = field(default_factory=lambda: [1, 2, 4])
    bubble_costs: str = "1,2"


@dataclass
class TablePoint:
    ranks: int
    microbatches: int
    profile: str
    makespans: dict[str, float]  # kind -> simulated makespan, planned for these costs;
    # kinds that cannot run at this D and N are left out
    split: SearchFigures | None  # BitPipe's placement, I and W (None: no OR-Tools)
    whole: SearchFigures | None  # BitPipe's placement, whole backwards

    def to_json(self) -> dict:
        data = asdict(self)
        for name in ("split", "whole"):
            if getattr(self, name) is not None:
                data[name]["gap"] = getattr(self, name).gap
        return data


def run_schedule_table(
    settings: ScheduleTableSettings, cache: SearchCache, report: Callable[[str], None] = print
) -> list[TablePoint]:
    searching = available()
    points = []
    for ranks in settings.ranks:
        for multiple in settings.microbatch_multiples:
            microbatches = ranks * multiple
            for profile in settings.profiles:
                costs = OpCosts.parse(profile)
                makespans = {}
                for kind in SCHEDULE_KINDS:
                    if not can_run(kind, ranks, microbatches):
                        continue
                    scaled = costs.scaled(ranks / stage_count(kind, ranks))
                    schedule = plan(kind, ranks, microbatches, scaled)
                    makespans[kind] = simulate(schedule, scaled).makespan
                found: dict[bool, SearchFigures | None] = {True: None, False: None}
                if searching:
                    scaled = same_model_costs(profile, "bitpipe", ranks)
                    for split in (True, False):
                        found[split] = cache.figures("bitpipe", ranks, microbatches, scaled,
                                                     split, float(ranks))
                point = TablePoint(ranks, microbatches, profile, makespans, found[True],
                                   found[False])
                report(progress_line(point))
                points.append(point)
    return points


def progress_line(point: TablePoint) -> str:
    def searched(figures: SearchFigures | None) -> str:
        if figures is None:
            return "no search"
        return f"search {figures.best:g}, bound {figures.bound:g}"

    return (
        f"D={point.ranks} N={point.microbatches} F,B,W={point.profile}: bitpipe-zb "
        f"{point.makespans['bitpipe-zb']:g} ({searched(point.split)}), bitpipe "
        f"{point.makespans['bitpipe']:g} ({searched(point.whole)})"
    )


def fastest_rival(point: TablePoint) -> tuple[str, float]:
    rivals = {kind: value for kind, value in point.makespans.items() if kind != "bitpipe-zb"}
    kind = min(rivals, key=lambda name: (rivals[name], name))
    return kind, rivals[kind]


def bubble_table(settings: ScheduleTableSettings) -> dict[str, dict[int, float]]:
    """kind -> N -> mean bubble over ranks at D = bubble_ranks, on the same model, its order
    planned for bubble_costs (kinds that cannot run at some N leave it out)."""
    ranks, costs = settings.bubble_ranks, OpCosts.parse(settings.bubble_costs)
    table: dict[str, dict[int, float]] = {}
    for kind in SCHEDULE_KINDS:
        scaled = costs.scaled(ranks / stage_count(kind, ranks))
        table[kind] = {
            ranks * multiple: statistics.mean(
                simulate(plan(kind, ranks, ranks * multiple, scaled), scaled).bubble
            )
            for multiple in settings.bubble_multiples
            if can_run(kind, ranks, ranks * multiple)
        }
    return table
