"""Every schedule against the search's best order: simulated makespans, no runtime involved.

For every D, N = k·D and cost profile F,B,W (I = B − W), on the same model
(costs scaled by D/S): each kind planned for those costs and simulated
with them, and CP-SAT's best order and proven lower bound for BitPipe's
placement with the backward split (bitpipe-zb's yardstick) and without
(plain bitpipe's), at the memory cap of D micro-batches of L/D layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from mpipipe.schedules import SCHEDULE_KINDS, can_run, plan, simulate, stage_count
from mpipipe.schedules.simulate import OpCosts

PROFILES = ("1,2,1", "1,1,0.5", "1,2,0.5", "1,3,1.5")


@dataclass
class ScheduleTableSettings:
    ranks: list[int] = field(default_factory=lambda: [4, 8])
    microbatch_multiples: list[int] = field(default_factory=lambda: [1, 2, 4])
    profiles: list[str] = field(default_factory=lambda: list(PROFILES))
    time_limit_s: float = 120.0  # per search
    workers: int = 2


@dataclass
class SearchFigures:
    best: float
    bound: float
    optimal: bool

    @property
    def gap(self) -> float:
        return (self.best - self.bound) / self.best


@dataclass
class TablePoint:
    ranks: int
    microbatches: int
    profile: str
    makespans: dict[str, float]  # kind -> simulated makespan, planned for these costs;
    # kinds that cannot run at this D and N are left out
    split: SearchFigures  # BitPipe's placement, I and W
    whole: SearchFigures  # BitPipe's placement, whole backwards

    def to_json(self) -> dict:
        data = asdict(self)
        data["split"]["gap"], data["whole"]["gap"] = self.split.gap, self.whole.gap
        return data



def run_schedule_table(
    settings: ScheduleTableSettings, report: Callable[[str], None] = print
) -> list[TablePoint]:
    from mpipipe.schedules.search import search

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
                scaled = costs.scaled(ranks / stage_count("bitpipe", ranks))
                found = {}
                for split in (True, False):
                    result = search("bitpipe", ranks, microbatches, scaled, split,
                                    float(ranks), settings.time_limit_s, settings.workers)
                    found[split] = SearchFigures(result.makespan, result.bound, result.optimal)
                point = TablePoint(ranks, microbatches, profile, makespans, found[True],
                                   found[False])
                report(
                    f"D={ranks} N={microbatches} F,B,W={profile}: bitpipe-zb "
                    f"{makespans['bitpipe-zb']:g} (search {point.split.best:g}, bound "
                    f"{point.split.bound:g}), bitpipe {makespans['bitpipe']:g} (search "
                    f"{point.whole.best:g}, bound {point.whole.bound:g})"
                )
                points.append(point)
    return points


def fastest_rival(point: TablePoint) -> tuple[str, float]:
    rivals = {kind: value for kind, value in point.makespans.items() if kind != "bitpipe-zb"}
    kind = min(rivals, key=lambda name: (rivals[name], name))
    return kind, rivals[kind]
