"""What a checkpoint holds, which rank writes each dataset, and this rank's arrays for them.

A logical parameter has several holders: BitPipe's mirror stage, Chimera's
second pipe, every data-parallel replica. Their copies (and optimizer
states) are bitwise equal, so one holder writes it; `assign_writers` picks
it deterministically, largest parameters first, each to its least-loaded
holder, which spreads the bytes evenly over the ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from mpipipe.checkpoint.layout import param_dataset, state_dataset
from mpipipe.runtime.params import ParamKey, ParamStore


@dataclass(frozen=True)
class Entry:
    """One dataset of the file: a parameter or one optimizer state array of it."""

    path: str
    key: ParamKey
    state: str | None  # None for the parameter itself
    shape: tuple[int, ...]
    writer: int  # rank in the saving communicator


def assign_writers(
    holders: dict[ParamKey, list[int]], sizes: dict[ParamKey, int]
) -> dict[ParamKey, int]:
    """Each parameter to one of its holders: largest first, to the holder with fewest elements."""
    load: dict[int, int] = {}
    writers = {}
    for key in sorted(holders, key=lambda key: (-sizes[key], key)):
        writer = min(holders[key], key=lambda rank: (load.get(rank, 0), rank))
        writers[key] = writer
        load[writer] = load.get(writer, 0) + sizes[key]
    return writers


def holders_of(held_by_rank: list[list[ParamKey]]) -> dict[ParamKey, list[int]]:
    """Invert every rank's list of held parameters."""
    holders: dict[ParamKey, list[int]] = {}
    for rank, keys in enumerate(held_by_rank):
        for key in keys:
            holders.setdefault(tuple(key), []).append(rank)
    return holders


def plan_entries(
    shapes: dict[ParamKey, tuple[int, ...]],
    writers: dict[ParamKey, int],
    state_names: tuple[str, ...],
) -> list[Entry]:
    """Every dataset in file order: all parameters, then each optimizer state."""
    keys = sorted(shapes)
    entries = [Entry(param_dataset(key), key, None, shapes[key], writers[key]) for key in keys]
    for state in state_names:
        entries += [
            Entry(state_dataset(state, key), key, state, shapes[key], writers[key]) for key in keys
        ]
    return entries


def optimizer_slices(store: ParamStore, optimizer) -> dict[ParamKey, dict[str, object]]:
    """Each parameter's optimizer state arrays, as views shaped like the parameter.

    The optimizer has one group per span of each bucket (`Bucket.spans`), keyed by the span.
    """
    state_of_span = {
        group.key: state for group, state in zip(optimizer.groups, optimizer.state, strict=True)
    }
    slices: dict[ParamKey, dict[str, object]] = {}
    for bucket in store.buckets:
        for span in bucket.spans():
            state = state_of_span[span]
            for key in bucket.keys:
                offset, shape = bucket.offsets[key] - span.start, bucket.shapes[key]
                if 0 <= offset < span.end - span.start:
                    slices[key] = {
                        name: array[offset : offset + prod(shape)].reshape(shape)
                        for name, array in state.items()
                    }
    return slices
