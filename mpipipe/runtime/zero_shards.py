"""ZeRO-1's shard arithmetic: which slice of a bucket's flat arrays a holder owns.

With parallel.zero = 1 a bucket held by R world ranks (its `world_members`:
data-parallel replicas times BitPipe's mirror pair, and a tied weight's
stages) is padded to a multiple of R elements and cut into R equal shards,
the i-th member (in `world_members` order, the communicator's rank order)
owning shard i. The reduce-scatter of the gradient, the optimizer's state,
the fp16/bf16 master weights, the all-gather of the updated weights and the
checkpoint's gathering of the state all use this one cut. Padding elements
lie past every parameter: their gradient is 0 and no optimizer group covers
them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """Shard `position` of `holders`: bucket elements [start, start + length), of which
    [start, end) are real (end < start + length only where padding is: in the last shard,
    or in the last few when the bucket has fewer elements than holders)."""

    position: int
    holders: int
    length: int
    size: int  # the bucket's elements, without padding

    @property
    def start(self) -> int:
        return self.position * self.length

    @property
    def end(self) -> int:
        return max(self.start, min(self.size, self.start + self.length))

    @property
    def padded_size(self) -> int:
        return self.length * self.holders

    def overlap(self, start: int, end: int) -> tuple[int, int] | None:
        """The part of bucket elements [start, end) in this shard, or None."""
        low, high = max(start, self.start), min(end, self.end)
        return (low, high) if low < high else None


def shard_of(size: int, members: list[int], world_rank: int) -> Shard | None:
    """`world_rank`'s shard of a bucket of `size` elements held by `members`; None when
    the bucket has one holder (nothing to shard)."""
    if len(members) == 1:
        return None
    holders = len(members)
    length = -(-size // holders)  # ceil: the last shard carries the padding
    return Shard(members.index(world_rank), holders, length, size)
