"""Lowering to sends and receives: matched pairs, local hand-overs, unique tags."""

import pytest

from mpipipe.schedules import SCHEDULE_KINDS, build_schedule, lower, max_tag, message_tag, simulate
from mpipipe.schedules.ops import OpType


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
@pytest.mark.parametrize("ranks,microbatches", [(2, 4), (4, 8)])
def test_every_send_meets_its_receive(kind, ranks, microbatches):
    schedule = build_schedule(kind, ranks, microbatches)
    sends, receives = {}, {}
    for rank in range(ranks):
        lowered = lower(schedule, rank)
        assert [item.op for item in lowered] == schedule.ops[rank]
        for item in lowered:
            op = item.op
            if op.type in (OpType.BACKWARD_WEIGHT, OpType.SYNC):
                assert item.send is None and item.receive is None
            if op.type is OpType.FORWARD:
                assert (item.receive is None) == (op.stage == 0)
                assert (item.send is None) == (op.stage == schedule.stages - 1)
            for transfer, table in ((item.send, sends), (item.receive, receives)):
                if transfer is None:
                    continue
                assert transfer.microbatch == op.microbatch and transfer.pipe == op.pipe
                key = (transfer.direction, transfer.pipe, transfer.boundary, transfer.microbatch)
                assert key not in table
                table[key] = (rank, transfer)
    assert sends.keys() == receives.keys()
    remote = 0
    for key, (sender, send) in sends.items():
        receiver, receive = receives[key]
        assert send.tag == receive.tag
        if sender == receiver:
            assert send.peer is None and receive.peer is None
        else:
            assert (send.peer, receive.peer) == (receiver, sender)
            remote += 1
    assert remote == simulate(schedule).messages
    tags = [send.tag for _, send in sends.values()]
    assert len(set(tags)) == len(tags)
    assert max(tags) <= max_tag(schedule)


def test_local_hand_overs_are_exactly_the_shared_boundaries():
    schedule = build_schedule("bitpipe", 4, 4)
    local = {
        (item.send.pipe, item.send.boundary)
        for rank in range(4)
        for item in lower(schedule, rank)
        if item.send is not None and item.send.peer is None
    }
    # The V turns on rank D-1 (down pipe, S3 -> S4) and rank 0 (up pipe, S3 -> S4).
    assert local == {(0, 3), (1, 3)}


def test_tags_are_unique_and_dense():
    stages, pipes, microbatches = 8, 2, 6
    seen = {}
    for microbatch in range(microbatches):
        for pipe in range(pipes):
            for boundary in range(stages - 1):
                for direction in (0, 1):
                    tag = message_tag(pipe, boundary, microbatch, direction, stages, pipes)
                    assert tag not in seen
                    seen[tag] = (pipe, boundary, microbatch, direction)
    assert sorted(seen) == list(range(len(seen)))


def test_max_tag_is_the_largest_tag_used():
    for kind in SCHEDULE_KINDS:
        schedule = build_schedule(kind, 4, 8)
        tags = [
            transfer.tag
            for rank in range(4)
            for item in lower(schedule, rank)
            for transfer in (item.send, item.receive)
            if transfer is not None
        ]
        assert max(tags) == max_tag(schedule), kind
