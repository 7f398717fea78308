"""Integer time for the solver: the costs scaled so that every duration is a whole number."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

_MOST_STEPS = 1000  # per time unit


@dataclass(frozen=True)
class TimeScale:
    steps_per_unit: int
    exact: bool  # False where some duration had to be rounded to 1/steps_per_unit

    def ticks(self, value: float) -> int:
        return round(value * self.steps_per_unit)

    def time(self, ticks: float) -> float:
        return ticks / self.steps_per_unit


def time_scale(values: Sequence[float]) -> TimeScale:
    """The fewest steps per time unit that make every value whole, at most 1000 (then rounded)."""
    denominator = 1
    for value in values:
        fraction = Fraction(value).limit_denominator(_MOST_STEPS)
        if abs(float(fraction) - value) > 1e-9 * max(1.0, abs(value)):
            return TimeScale(_MOST_STEPS, exact=False)
        denominator = denominator * fraction.denominator // _gcd(denominator, fraction.denominator)
        if denominator > _MOST_STEPS:
            return TimeScale(_MOST_STEPS, exact=False)
    return TimeScale(denominator, exact=True)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a
