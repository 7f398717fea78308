"""Memory sizes a person writes and reads: "80GiB" in, "5.70 GiB" out."""

from __future__ import annotations

import re

from mpipipe.errors import UsageError

UNITS = {
    "B": 1, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([A-Za-z]+)")


def parse_memory(text: str, what: str = "--memory") -> int:
    """Bytes of a size such as '80GiB', '40GB' or '512MiB' (a number, then a unit, no space)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or match.group(2) not in UNITS or float(match.group(1)) <= 0:
        raise UsageError(
            f"{what} {text!r} is not a memory size: give a positive number and a unit with no "
            f"space between, e.g. 80GiB or 40GB (units: {', '.join(UNITS)})"
        )
    return int(float(match.group(1)) * UNITS[match.group(2)])


def gib_text(count: float) -> str:
    """A byte count in binary units, as the planner prints it: '5.70 GiB', '12.0 MiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{int(count)} B"
