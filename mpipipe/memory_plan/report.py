"""The planner's answer for a person (a table and a verdict) and for scripts (JSON)."""

from __future__ import annotations

from dataclasses import asdict

from mpipipe.memory_plan.budget import gib_text
from mpipipe.memory_plan.predict import MemoryPlan
from mpipipe.memory_plan.suggest import Change

COLUMNS = ("rank", "stages", "params", "grads", "optimizer", "working", "activations",
           "messages", "total")


def describe_layout(plan: MemoryPlan) -> str:
    config = plan.config
    parallel, data, runtime = config.parallel, config.data, config.runtime
    replicas = f"{parallel.data_parallel} replica" + ("s" if parallel.data_parallel != 1 else "")
    return (
        f"{parallel.schedule} on {parallel.pipeline} pipeline ranks x {replicas} "
        f"({plan.world_size} MPI ranks), {parallel.microbatches} micro-batches of "
        f"{data.microbatch_size} x {config.model.seq_len} tokens, {runtime.precision} "
        f"({runtime.dtype} master), recompute {runtime.recompute}, zero {parallel.zero}"
    )


def bubble_text(plan: MemoryPlan) -> str:
    low, high = min(plan.bubble), max(plan.bubble)
    mean = sum(plan.bubble) / len(plan.bubble)
    spread = "every rank" if high - low < 5e-4 else f"mean; {low:.1%} to {high:.1%}"
    return f"simulated bubble at {plan.costs.describe(plan.split_backward)}: {mean:.1%} ({spread})"


def verdict(plan: MemoryPlan, budget: int, fix: Change | None) -> str:
    """One line: whether the worst rank fits `budget`, and if not the smallest change that does."""
    peak = plan.peak
    if peak.total <= budget:
        return (f"fits: the most any rank needs is {gib_text(peak.total)} (pipeline rank "
                f"{peak.pipe_rank}), {peak.total / budget:.0%} of the {gib_text(budget)} budget")
    needs = (f"does not fit: pipeline rank {peak.pipe_rank} needs {gib_text(peak.total)}, more "
             f"than the {gib_text(budget)} budget")
    if fix is None:
        return (f"{needs}, and no single change or pair among runtime.recompute, parallel.zero, "
                "data.microbatch_size with parallel.microbatches and parallel.pipeline fits: use "
                "a smaller model or more memory per rank")
    then = fix.plan.peak
    return (f"{needs}; the smallest change that fits: {fix.describe()} (then at most "
            f"{gib_text(then.total)}, pipeline rank {then.pipe_rank})")


def text_report(plan: MemoryPlan, budget: int | None, fix: Change | None) -> str:
    rows = [COLUMNS]
    for rank in plan.ranks:
        rows.append((
            str(rank.pipe_rank), ",".join(map(str, rank.stages)), gib_text(rank.parameters),
            gib_text(rank.gradients), gib_text(rank.optimizer), gib_text(rank.working),
            f"{gib_text(rank.activations)} ({rank.peak_chunks:g})", gib_text(rank.messages),
            gib_text(rank.total),
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS))]
    table = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines = [
        describe_layout(plan),
        bubble_text(plan),
        "per pipeline rank (each replica alike); activations at the peak, in brackets the "
        "peak in-flight micro-batches (of L/D layers):",
        *table,
    ]
    if budget is not None:
        lines.append(verdict(plan, budget, fix))
    return "\n".join(lines)


def json_report(plan: MemoryPlan, budget: int | None, fix: Change | None) -> dict:
    parallel = plan.config.parallel
    return {
        "schedule": parallel.schedule,
        "pipeline": parallel.pipeline,
        "data_parallel": parallel.data_parallel,
        "world_size": plan.world_size,
        "bubble": plan.bubble,
        "ranks": [{**asdict(rank), "stages": list(rank.stages), "total": rank.total}
                  for rank in plan.ranks],
        "peak_bytes": plan.peak.total,
        "peak_rank": plan.peak.pipe_rank,
        "budget_bytes": budget,
        "fits": None if budget is None else plan.fits(budget),
        "fix": None if fix is None else {
            "set": fix.overrides(), "world_size": fix.world_size,
            "peak_bytes": fix.plan.peak.total,
        },
    }
