"""Bytes that layer caches keep alive, counted from the arrays themselves.

A cache is any nesting of tuples, lists, sets, dicts (their values),
dataclasses (their fields) and arrays, NumPy or CuPy. An array keeps its
whole buffer alive, and a view keeps its base, so the count is the sum of
`nbytes` over the distinct buffers reached: views of one base, or one array
held twice, count once, and a small view of a large array counts the large
one. Numbers, strings, shapes and None count nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np


def is_array(value) -> bool:
    """A NumPy or CuPy array (not a NumPy scalar)."""
    if isinstance(value, np.ndarray):
        return True
    return type(value).__module__.startswith("cupy") and hasattr(value, "nbytes")


def buffer_owner(array):
    """The array whose buffer `array` is, or is a view of."""
    while is_array(array.base):
        array = array.base
    return array


def arrays_within(*values) -> Iterator[object]:
    """Every array reached from `values`; each container is walked once (cycles end)."""
    pending = list(values)
    walked: set[int] = set()
    while pending:
        value = pending.pop()
        if is_array(value):
            yield value
            continue
        if id(value) in walked:
            continue
        walked.add(id(value))
        if isinstance(value, (tuple, list, set, frozenset)):
            pending.extend(value)
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            pending.extend(getattr(value, field.name) for field in dataclasses.fields(value))


def live_bytes(*values) -> int:
    """Bytes of the distinct buffers the arrays within `values` keep alive."""
    owners = {}
    for array in arrays_within(*values):
        owner = buffer_owner(array)
        owners[id(owner)] = owner
    return sum(int(owner.nbytes) for owner in owners.values())
