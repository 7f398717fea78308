"""Cut a model's layers into pipeline stages.

`uniform` splits the body layers (transformer blocks) into equal runs of
consecutive layers; the layers before the first body layer (embedding) join
stage 0, those after the last (final norm, head, loss) join the last stage,
and a non-body layer between blocks stays with the block before it.

`balanced` cuts all layers into contiguous, non-empty stages so that the
slowest stage is as fast as possible (exact: a binary search over the
possible stage costs, each checked greedily).
"""

from __future__ import annotations

import bisect

from mpipipe.errors import UsageError

PARTITION_METHODS = ("uniform", "balanced")


def partition_layers(
    costs: list[float],
    is_body: list[bool],
    stages: int,
    method: str,
    describe: str = "model",
    why_stages: str = "",
) -> list[range]:
    """One range of global layer indices per stage, covering 0..len(costs)-1 in order.

    `describe` names the model in errors ("gpt"); `why_stages` says where the
    stage count comes from ("bitpipe with 4 pipeline ranks uses 2*4 stages").
    """
    if len(costs) != len(is_body):
        raise ValueError(f"{len(costs)} layer costs but {len(is_body)} is_body flags")
    if any(cost < 0 for cost in costs):
        raise ValueError(f"layer costs must be non-negative, got {costs}")
    if stages < 1:
        raise UsageError(f"parallel.pipeline: the model needs at least 1 stage, got {stages}")
    reason = f" ({why_stages})" if why_stages else ""
    if method == "uniform":
        return _uniform(is_body, stages, describe, reason)
    if method == "balanced":
        return _balanced(costs, stages, describe, reason)
    choices = ", ".join(PARTITION_METHODS)
    raise UsageError(f"parallel.partition: unknown method {method!r} (choose from {choices})")


def _uniform(is_body: list[bool], stages: int, describe: str, reason: str) -> list[range]:
    body = [index for index, flag in enumerate(is_body) if flag]
    if not body or len(body) % stages:
        multiples = ", ".join(str(stages * k) for k in (1, 2, 3))
        raise UsageError(
            f"{describe} has {len(body)} transformer blocks, which cannot be split evenly into "
            f"{stages} stages{reason}: use model.n_layer = {multiples} ... "
            "or parallel.partition = 'balanced'"
        )
    per_stage = len(body) // stages
    starts = [0] + [body[stage * per_stage] for stage in range(1, stages)] + [len(is_body)]
    return [range(starts[stage], starts[stage + 1]) for stage in range(stages)]


def _balanced(costs: list[float], stages: int, describe: str, reason: str) -> list[range]:
    layers = len(costs)
    if layers < stages:
        raise UsageError(
            f"{describe} has {layers} layers, too few for {stages} stages of at least one "
            f"layer{reason}: use a model with at least {stages} layers or fewer pipeline ranks"
        )
    prefix = [0.0]
    for cost in costs:
        prefix.append(prefix[-1] + cost)
    # The slowest stage of the best cut costs exactly some segment's sum.
    candidates = sorted(
        {
            prefix[end] - prefix[start]
            for start in range(layers)
            for end in range(start + 1, layers + 1)
        }
    )
    low, high = 0, len(candidates) - 1
    while low < high:
        middle = (low + high) // 2
        if _stages_needed(prefix, candidates[middle]) <= stages:
            high = middle
        else:
            low = middle + 1
    return _cut(prefix, candidates[low], stages)


def _furthest_end(prefix: list[float], start: int, limit: float) -> int:
    """The largest end with cost(start..end) <= limit, forgiving float rounding of sums."""
    slack = 1e-12 * max(prefix[-1], 1.0)
    return bisect.bisect_right(prefix, prefix[start] + limit + slack, lo=start + 1) - 1


def _stages_needed(prefix: list[float], limit: float) -> int:
    """Fewest contiguous stages of cost <= limit each (more than the layers if one exceeds it)."""
    layers = len(prefix) - 1
    start = count = 0
    while start < layers:
        end = _furthest_end(prefix, start, limit)
        if end == start:
            return layers + 1
        start, count = end, count + 1
    return count


def _cut(prefix: list[float], limit: float, stages: int) -> list[range]:
    """Fill stages greedily up to `limit`, leaving at least one layer for every later stage."""
    layers = len(prefix) - 1
    ranges = []
    start = 0
    for stage in range(stages):
        later = stages - stage - 1
        end = _furthest_end(prefix, start, limit)
        end = layers if later == 0 else min(max(end, start + 1), layers - later)
        ranges.append(range(start, end))
        start = end
    return ranges
