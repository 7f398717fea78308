"""Which gradient buckets this rank sums with other ranks, over which communicator, and when.

A bucket held by several world ranks (mirror stages, data-parallel replicas,
a tied weight) is summed in place by one non-blocking allreduce over a
communicator of exactly its holders. Every rank creates the communicators of
its buckets in the global bucket order, so the creations match across ranks.
A bucket's sum starts at the last SYNC op of its stages on this rank, once no
op of this rank touches it any more, or after the step's last op when some
stage of it that this rank holds has no SYNC op. Under ZeRO-1 the same launch
is a reduce-scatter into the rank's shard (mpipipe/DESIGN.md, "ZeRO-1"), and
the same communicator carries the all-gather of the updated weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpipipe.runtime.params import Bucket, ParamStore
from mpipipe.schedules.lowering import LoweredOp
from mpipipe.schedules.ops import OpType


@dataclass(frozen=True)
class BucketSync:
    bucket: Bucket
    comm: object  # communicator of bucket.world_members


@dataclass
class SyncPlan:
    launches: dict[int | None, list[BucketSync]]  # op position (None: after the last op)

    @classmethod
    def build(
        cls, comm, store: ParamStore, lowered: list[LoweredOp], held_stages: set[int]
    ) -> SyncPlan:
        """Collective over `comm`: creates the communicator of every shared bucket."""
        communicators = _create_communicators(comm, store.buckets)
        last_sync_of_stage = {
            op.op.stage: position
            for position, op in enumerate(lowered)
            if op.op.type is OpType.SYNC
        }
        launches: dict[int | None, list[BucketSync]] = {}
        for bucket in store.buckets:
            if bucket.index not in communicators:
                continue
            positions = [last_sync_of_stage.get(stage) for stage in bucket.stages]
            mine = [position for position in positions if position is not None]
            held = [stage for stage in bucket.stages if stage in held_stages]
            launch = max(mine) if len(mine) == len(held) and mine else None
            launches.setdefault(launch, []).append(BucketSync(bucket, communicators[bucket.index]))
        return cls(launches)

    def starting_at(self, position: int | None) -> list[BucketSync]:
        """The sums the SYNC op at `position` starts (None: those started after the last op)."""
        return self.launches.get(position, [])

    def in_bucket_order(self) -> list[BucketSync]:
        """Every bucket sum, in the global bucket order (the order of their communicators'
        creation, the same on every rank)."""
        syncs = [sync for launched in self.launches.values() for sync in launched]
        return sorted(syncs, key=lambda sync: sync.bucket.index)


def _create_communicators(comm, buckets: list[Bucket]) -> dict[int, object]:
    """One communicator per bucket with more than one holder, made by its members only."""
    world_group = comm.Get_group()
    communicators = {}
    for bucket in buckets:
        if len(bucket.world_members) == 1:
            continue
        group = world_group.Incl(bucket.world_members)
        communicators[bucket.index] = comm.Create_group(group, tag=bucket.index)
        group.Free()
    world_group.Free()
    return communicators
