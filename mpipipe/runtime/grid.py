"""The process grid: world = data-parallel replicas x pipeline ranks.

World rank w sits at pipeline rank w % D of replica w // D, so the ranks of
one pipeline are consecutive (on the same node when D divides the ranks per
node) and the heavy point-to-point traffic stays inside a node.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessGrid:
    pipeline: int  # D
    data_parallel: int
    world_rank: int

    @property
    def world_size(self) -> int:
        return self.pipeline * self.data_parallel

    @property
    def pipe_rank(self) -> int:
        return self.world_rank % self.pipeline

    @property
    def replica(self) -> int:
        return self.world_rank // self.pipeline

    def world_rank_of(self, pipe_rank: int, replica: int | None = None) -> int:
        """World rank of `pipe_rank` in `replica` (this rank's replica by default)."""
        if replica is None:
            replica = self.replica
        return replica * self.pipeline + pipe_rank


def make_grid(pipeline: int, data_parallel: int, world_size: int, world_rank: int) -> ProcessGrid:
    """The grid of a validated layout (config.validate checks the world size for users)."""
    if pipeline * data_parallel != world_size:
        raise ValueError(
            f"a {pipeline} x {data_parallel} grid does not fill a world of {world_size} ranks"
        )
    return ProcessGrid(pipeline=pipeline, data_parallel=data_parallel, world_rank=world_rank)
