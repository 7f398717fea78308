"""Receive buffers chosen once per step: never shared by two live messages, and no more of
them than messages are ever live at once (computed here from the lifetimes directly)."""

import pytest

from mpipipe.errors import UsageError
from mpipipe.runtime.receive_slots import ReceiveNeed, assign_slots
from mpipipe.schedules import SCHEDULE_KINDS, build_schedule
from mpipipe.schedules.lowering import lower
from mpipipe.schedules.ops import OpType


def needs_and_releases(schedule, rank):
    lowered = lower(schedule, rank)
    needs, releases = [], {}
    for position, item in enumerate(lowered):
        op = item.op
        chunk = (op.pipe, op.stage, op.microbatch)
        if item.receive is not None and item.receive.peer is not None:
            # Two kinds, as activations and gradients of different shapes would be.
            needs.append(ReceiveNeed(position, item.receive.direction, chunk))
        if op.type in (OpType.BACKWARD, OpType.BACKWARD_WEIGHT):
            releases[position] = chunk
    return needs, releases


def lifetimes(needs, releases, window, lookahead):
    """Per receive: the op that starts it, the op that finishes it, the op that frees its data.

    A receive starts `lookahead` ops before its op (-1: at the step's start), but not before the
    op that finishes the receive `window` before it."""
    release_of = {chunk: position for position, chunk in releases.items()}
    spans = []
    for index, need in enumerate(needs):
        after_window = -1 if index < window else needs[index - window].position
        started = max(-1, need.position - lookahead, after_window)
        spans.append((started, need.position, release_of[need.chunk]))
    return spans


def cases() -> list:
    found = []
    for kind in SCHEDULE_KINDS:
        for ranks, microbatches in ((2, 4), (4, 8)):
            try:
                schedule = build_schedule(kind, ranks, microbatches)
            except UsageError:
                continue
            for rank in range(ranks):
                for window, lookahead in ((1, 1), (3, 2), (8, 1), (8, 100)):
                    name = f"{kind}-D{ranks}-r{rank}-w{window}-l{lookahead}"
                    found.append(pytest.param(schedule, rank, window, lookahead, id=name))
    return found


@pytest.mark.parametrize("schedule, rank, window, lookahead", cases())
def test_no_buffer_holds_two_live_messages_and_none_is_spare(schedule, rank, window, lookahead):
    needs, releases = needs_and_releases(schedule, rank)
    plan = assign_slots(needs, releases, window, lookahead)
    spans = lifetimes(needs, releases, window, lookahead)
    for i, (start_i, finish_i, free_i) in enumerate(spans):
        for j in range(i + 1, len(spans)):
            start_j, finish_j, free_j = spans[j]
            if plan.buffers[i] == plan.buffers[j]:
                # A buffer freed by an op can be taken by a receive started in a later op only.
                assert start_j > free_i or start_i > free_j, (i, j, spans[i], spans[j])
            if plan.stagings[i] == plan.stagings[j]:
                assert start_j >= finish_i or start_i >= finish_j, (i, j)
    for kinds, slots, live_until in ((plan.buffer_kinds, plan.buffers, 2),
                                     (plan.staging_kinds, plan.stagings, 1)):
        for kind in set(kinds):
            mine = [span for need, span in zip(needs, spans, strict=True) if need.kind == kind]
            # Most receives of this kind live at once, sampled just after each op's starts.
            most = max(
                sum(1 for span in mine if span[0] <= point < span[live_until] + (live_until == 2))
                for point in range(-1, len(lower(schedule, rank)))
            )
            used = {slot for need, slot in zip(needs, slots, strict=True) if need.kind == kind}
            assert len(used) == most
            assert all(kinds[slot] == kind for slot in used)


def test_receives_out_of_order_or_never_freed_are_refused():
    needs = [ReceiveNeed(3, "a", (0, 1, 0)), ReceiveNeed(1, "a", (0, 1, 1))]
    with pytest.raises(ValueError, match="in the order"):
        assign_slots(needs, {5: (0, 1, 0), 6: (0, 1, 1)}, window=2, lookahead=1)
    with pytest.raises(ValueError, match="never released"):
        assign_slots([ReceiveNeed(1, "a", (0, 1, 0))], {}, window=2, lookahead=1)
    with pytest.raises(ValueError, match="at least 1"):
        assign_slots([], {}, window=0, lookahead=1)
