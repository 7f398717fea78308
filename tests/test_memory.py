"""live_bytes: the distinct buffers a cache keeps alive, counted once each, against
byte counts written out by hand."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpipipe.layers import MicroBatch
from mpipipe.layers.memory import arrays_within, live_bytes

from cupy_device import cupy, needs_gpu


def test_arrays_count_their_bytes_and_other_values_nothing():
    assert live_bytes(np.zeros(10)) == 80
    assert live_bytes(np.zeros((3, 4), dtype=np.float32), np.zeros(5, dtype=np.int8)) == 53
    assert live_bytes(np.array(2.0)) == 8  # a 0-d array (a loss) is an array
    assert live_bytes(None, 3, 2.5, "text", (4, 5), np.float64(1.0)) == 0
    assert live_bytes() == 0


def test_views_count_their_base_once():
    base = np.zeros((4, 6))
    views = (base[1:3], base.T, base.reshape(24), base[::2, ::3], base.swapaxes(0, 1)[0])
    assert live_bytes(views) == base.nbytes
    assert live_bytes(base, views) == base.nbytes


def test_a_small_view_keeps_its_whole_base_alive():
    row = np.zeros((1000, 10))[3]
    assert row.nbytes == 80
    assert live_bytes(row) == 80_000


def test_a_view_of_a_view_and_a_broadcast_count_the_owner():
    base = np.arange(12.0)
    assert live_bytes(base.reshape(3, 4)[1:].T) == 96
    assert live_bytes(np.broadcast_to(base, (1000, 12))) == 96


def test_copies_are_separate_buffers():
    base = np.zeros(8)
    assert live_bytes(base, base.copy(), np.ascontiguousarray(base[::2])) == 64 + 64 + 32


def test_one_array_held_in_several_places_counts_once():
    shared = np.zeros(16)
    cache = {"a": (shared, [shared]), "b": {"c": shared}, "d": [shared[:4]]}
    assert live_bytes(cache) == 128
    assert live_bytes(cache, [shared], (shared,)) == 128


@dataclass
class Pair:
    first: object
    second: object


def test_nested_containers_and_dataclasses_are_walked():
    a, b, c, d = np.zeros(1), np.zeros(2), np.zeros(3), np.zeros(4, dtype=np.int64)
    cache = [(a, {"x": Pair(b, [c])}), {frozenset([1]), 7}, MicroBatch(d, None, None, 1.0)]
    assert live_bytes(cache) == (1 + 2 + 3 + 4) * 8
    assert len(list(arrays_within(cache))) == 4


def test_dict_keys_are_names_not_contents():
    assert live_bytes({"weight": np.zeros(3)}) == 24


def test_a_cycle_ends():
    looped: list = [np.zeros(2)]
    looped.append(looped)
    assert live_bytes(looped) == 16


@needs_gpu
def test_gpu_arrays_and_their_views():
    base = cupy.zeros((4, 6))
    assert live_bytes(base[1:3], base.T, (base,), cupy.zeros(3, dtype=cupy.float32)) == 192 + 12
