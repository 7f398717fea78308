"""ZeRO-1's cut: the holders' shards tile a bucket exactly, in equal padded lengths."""

import pytest

from mpipipe.runtime.zero_shards import shard_of


@pytest.mark.parametrize("size", [1, 5, 8, 12, 13])
@pytest.mark.parametrize("holders", [2, 3, 4, 8])
def test_shards_tile_the_bucket_in_member_order(size, holders):
    members = [3 * rank + 1 for rank in range(holders)]  # world ranks, not 0..R-1
    shards = [shard_of(size, members, rank) for rank in members]
    assert [shard.position for shard in shards] == list(range(holders))
    assert len({shard.length for shard in shards}) == 1
    length = shards[0].length
    assert length * holders >= size > (length - 1) * holders  # padding under one per holder
    assert all(shard.start <= shard.end <= shard.start + length for shard in shards)
    covered = [index for shard in shards for index in range(shard.start, shard.end)]
    assert covered == list(range(size))
    assert all(shard.padded_size == length * holders for shard in shards)


def test_overlap_cuts_a_range_to_the_shard():
    shard = shard_of(10, [0, 1, 2], 1)  # elements [4, 8)
    assert (shard.start, shard.end) == (4, 8)
    assert shard.overlap(0, 6) == (4, 6)
    assert shard.overlap(6, 10) == (6, 8)
    assert shard.overlap(0, 4) is None
    last = shard_of(10, [0, 1, 2], 2)  # elements [8, 10), padded to 12
    assert (last.start, last.end, last.padded_size) == (8, 10, 12)


def test_one_holder_has_nothing_to_shard():
    assert shard_of(7, [5], 5) is None
