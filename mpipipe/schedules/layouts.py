"""Each built-in placement as a `Layout`: chunks on ranks, micro-batches on pipes, split or not.

The planners (candidates.py) and the search order the ops of a layout; the
names are the kinds whose placement each is.
"""

from __future__ import annotations

from mpipipe.errors import UsageError
from mpipipe.schedules.bitpipe import bitpipe_placement
from mpipipe.schedules.building import pipes_by_unit
from mpipipe.schedules.chimera import chimera_placement
from mpipipe.schedules.interleaved import interleaved_placement
from mpipipe.schedules.one_f_one_b import one_stage_per_rank
from mpipipe.schedules.planning import Layout
from mpipipe.schedules.zb_v import zb_v_placement

PLACEMENTS = ("bitpipe", "zb-v", "1f1b", "interleaved", "chimera")


def layout_of(
    placement: str, ranks: int, microbatches: int, split_backward: bool, chunks: int = 2
) -> Layout:
    """The layout of `placement` (one of PLACEMENTS) for D = ranks, N = microbatches."""
    one_pipe = {microbatch: 0 for microbatch in range(microbatches)}
    if placement == "bitpipe":
        rank_of_chunk, pipes = bitpipe_placement(ranks), pipes_by_unit(ranks, microbatches)
    elif placement == "chimera":
        rank_of_chunk, pipes = chimera_placement(ranks), pipes_by_unit(ranks, microbatches)
    elif placement == "zb-v":
        rank_of_chunk, pipes = zb_v_placement(ranks), one_pipe
    elif placement == "1f1b":
        rank_of_chunk, pipes = one_stage_per_rank(ranks), one_pipe
    elif placement == "interleaved":
        rank_of_chunk, pipes = interleaved_placement(ranks, chunks), one_pipe
    else:
        raise UsageError(
            f"--placement: unknown placement {placement!r} (choose from {', '.join(PLACEMENTS)})"
        )
    return Layout(ranks, rank_of_chunk, pipes, split_backward)
