"""Every rank runs the same schedule: a file read by each rank must have said the same.

Each rank reads parallel.schedule's CSV itself (like the config), so a file
edited while the job starts, or not the same file on every node, could give
ranks different op lists; they would then wait for messages no rank sends.
One allgather of the ops' digest, after set-up and before any pipeline
message, turns that into one line and exit 2 on every rank.
"""

from __future__ import annotations

from mpipipe.errors import UsageError
from mpipipe.plan import RunPlan


def check_same_schedule(comm, plan: RunPlan, rendezvous=None) -> None:
    """Collective: raise the same UsageError on every rank unless all ranks' ops are equal.

    The ranks meet at `rendezvous` (runtime/rendezvous.py) when given, where no wait
    is unbounded; otherwise they allgather on `comm`.
    """
    digest = plan.schedule.digest()
    digests = rendezvous.agree(digest) if rendezvous else comm.allgather(digest)
    other = next((rank for rank, digest in enumerate(digests) if digest != digests[0]), None)
    if other is None:
        return
    raise UsageError(
        f"parallel.schedule {plan.config.parallel.schedule!r}: the ranks read different "
        f"schedules (rank 0 ops {digests[0]}, rank {other} ops {digests[other]}): the file "
        "changed while the job started, or is not the same file on every node; put it on a "
        "file system every node shares, and start again"
    )
