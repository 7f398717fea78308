"""What a checkpoint holds, which rank writes each dataset, and this rank's arrays for them.

A logical parameter has several holders: BitPipe's mirror stage, Chimera's
second pipe, every data-parallel replica. Their copies (and optimizer
states) are bitwise equal, so one holder writes it; `assign_writers` picks
it deterministically, largest parameters first, each to its least-loaded
holder, which spreads the bytes evenly over the ranks.

Under ZeRO-1 each holder of a sharded bucket keeps only its shard of the
optimizer state (and, under fp16/bf16, of the master weights): a save first
all-gathers those shards into the whole flat arrays on every holder
(`gather_sharded`), so the file, its writers and its checksums stay as
without sharding; a load reads whole datasets and keeps its shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from mpipipe.checkpoint.layout import param_dataset, state_dataset
from mpipipe.runtime.params import ParamKey, ParamStore

MASTER = None  # gather_sharded's name for the master weights beside the state names


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


def optimizer_slices(
    store: ParamStore, optimizer, whole: dict[int, dict] | None = None
) -> dict[ParamKey, dict[str, object]]:
    """Each parameter's optimizer state arrays, as views shaped like the parameter.

    The optimizer has one group per span of each bucket (`Bucket.spans`), keyed by the span;
    a ZeRO-1 bucket's state comes from `whole` (`gather_sharded`).
    """
    state_of_span = {
        group.key: state for group, state in zip(optimizer.groups, optimizer.state, strict=True)
    }
    slices: dict[ParamKey, dict[str, object]] = {}
    for bucket in store.buckets:
        if bucket.shard is not None:
            for key in bucket.keys:
                slices[key] = {name: bucket.view(whole[bucket.index][name], key)
                               for name in type(optimizer).STATE_NAMES}
            continue
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


def master_views(store: ParamStore, whole: dict[int, dict]) -> dict[ParamKey, object]:
    """Each held parameter's whole master weights: the store's, or gathered (`whole`)."""
    views = dict(store.params)
    for bucket in store.buckets:
        if bucket.param is None:
            views.update({key: bucket.view(whole[bucket.index][MASTER], key)
                          for key in bucket.keys})
    return views


def gather_sharded(store: ParamStore, optimizer, comms: dict[int, object],
                   wait) -> dict[int, dict]:
    """ZeRO-1: every sharded bucket's whole flat state arrays by name (and MASTER, where the
    rank keeps only a shard of the master weights), on the host of every holder.

    Collective over each sharded bucket's communicator (`comms`); `wait(request, what)`
    polls a request until it is done.
    """
    to_host = store.backend.to_host
    shards = {bucket.index: bucket.shard for bucket in store.buckets}
    parts: dict[int, dict] = {}
    for bucket in store.buckets:
        shard = bucket.shard
        if shard is None:
            continue
        parts[bucket.index] = {name: np.zeros(shard.length, dtype=store.backend.dtype)
                               for name in type(optimizer).STATE_NAMES}
        if bucket.param is None:
            parts[bucket.index][MASTER] = to_host(bucket.master_shard)
    for group, state in zip(optimizer.groups, optimizer.state, strict=True):
        part = parts.get(group.key.bucket)
        if part is None:
            continue
        start = group.key.start - shards[group.key.bucket].start
        for name, array in state.items():
            part[name][start : start + array.size] = to_host(array)
    whole: dict[int, dict] = {}
    pending = []
    for index, arrays in sorted(parts.items()):
        shard = shards[index]
        whole[index] = {}
        for name, part in arrays.items():
            gathered = np.empty(shard.padded_size, dtype=part.dtype)
            pending.append((comms[index].Iallgather(part, gathered), index))
            whole[index][name] = gathered[: shard.size]
    for request, index in pending:
        wait(request, f"the optimizer state shards of bucket {index}")
    return whole
