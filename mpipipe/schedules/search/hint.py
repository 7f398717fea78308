"""Where the solver starts: the best order the planners find for the placement and costs.

The placement's own generators (plain and split) are planned for the costs
(`plan`) and join the list-scheduling candidates; the fastest order within
the memory cap is the hint, its micro-batches renumbered within each pipe in
the order they enter (the model's symmetry breaking expects that).
"""

from __future__ import annotations

from mpipipe.errors import UsageError
from mpipipe.schedules import plan
from mpipipe.schedules.candidates import Candidate, plan_layout
from mpipipe.schedules.ops import Op
from mpipipe.schedules.planning import Layout
from mpipipe.schedules.simulate import OpCosts

# (placement, split backward) -> the kind that generates orders of it
GENERATOR_OF = {
    ("bitpipe", False): "bitpipe",
    ("bitpipe", True): "bitpipe-zb",
    ("zb-v", True): "zb-v",
    ("1f1b", False): "1f1b",
    ("1f1b", True): "zb-h1",
    ("interleaved", False): "interleaved",
    ("chimera", False): "chimera",
}


def hint_order(
    placement: str, layout: Layout, costs: OpCosts, cap: int, chunks: int
) -> Candidate:
    fixed = []
    kind = GENERATOR_OF.get((placement, layout.split_backward))
    if kind is not None:
        microbatches = len(layout.pipe_of_microbatch)
        try:
            generated = plan(kind, layout.ranks, microbatches, costs, chunks=chunks)
            fixed.append((f"{kind} planned for these costs", generated.ops))
        except UsageError:
            pass  # the generator does not build this size; the list schedules still do
    best = plan_layout(layout, costs, cap, fixed)
    return Candidate(best.label, renumber_by_entry(best.ops), best.makespan)


def renumber_by_entry(ops: list[list[Op]]) -> list[list[Op]]:
    """The same order with each pipe's micro-batches numbered as they enter (stage 0's F)."""
    entering: dict[int, list[int]] = {}
    for rank_ops in ops:
        for op in rank_ops:
            if op.type.value == "F" and op.stage == 0:
                entering.setdefault(op.pipe, []).append(op.microbatch)
    # Each pipe keeps its own set of numbers, handed out in entry order.
    mapping = {}
    for order in entering.values():
        for old, new in zip(order, sorted(order), strict=True):
            mapping[old] = new
    return [
        [Op(op.type, op.stage, mapping[op.microbatch], op.pipe) for op in rank_ops]
        for rank_ops in ops
    ]
