"""The dry run: hand-computed timelines, the papers' bubble formulas, peaks, deadlocks."""

import pytest

from mpipipe.errors import UsageError
from mpipipe.schedules import ScheduleError, build_schedule, simulate
from mpipipe.schedules.csv_io import from_csv
from mpipipe.schedules.ops import Op
from mpipipe.schedules.simulate import OpCosts

SIZES = [(ranks, ranks * factor) for ranks in (2, 4, 8, 16) for factor in (1, 2, 4)]
EQUAL = OpCosts(forward=1, backward=1)
EQUAL_SPLIT = OpCosts(forward=1, backward=2, backward_weight=1)  # F = I = W


def test_hand_computed_1f1b_with_latency():
    # D=2, N=2, F=1, B=2, latency 0.5. Rank 1 runs F0 B0 F1 B1; rank 0 runs F0 F1 B0 B1.
    simulation = simulate(build_schedule("1f1b", 2, 2), OpCosts(1, 2, latency=0.5))
    starts = [{str(t.op): t.start for t in rank_ops} for rank_ops in simulation.timeline]
    assert starts[0] == {"0F0": 0, "0F1": 1, "0B0": 5, "0B1": 8, "0SYNC": 10}
    assert starts[1] == {"1F0": 1.5, "1B0": 2.5, "1F1": 4.5, "1B1": 5.5, "1SYNC": 7.5}
    assert simulation.makespan == 10
    assert simulation.bubble == pytest.approx([0.4, 0.4])
    assert simulation.messages == 4
    assert simulation.sync_starts == [{"0SYNC": 10}, {"1SYNC": 7.5}]


def test_local_hand_over_costs_no_latency():
    # BitPipe D=2: down stage 1 -> 2 turns on rank 1 (local), 0 -> 1 crosses ranks.
    simulation = simulate(build_schedule("bitpipe", 2, 2), OpCosts(1, 2, latency=10))
    start = {t.op: t.start for rank_ops in simulation.timeline for t in rank_ops}
    end = {t.op: t.end for rank_ops in simulation.timeline for t in rank_ops}
    first, turn, second = Op.parse("0F0"), Op.parse("1F0"), Op.parse("2F0")
    assert start[turn] == end[first] + 10
    assert start[second] >= end[turn]
    assert start[second] < end[turn] + 10


@pytest.mark.parametrize("ranks,microbatches", SIZES)
def test_bubble_formulas_at_equal_forward_and_backward(ranks, microbatches):
    formulas = {
        "gpipe": (ranks - 1) / (microbatches + ranks - 1),
        "1f1b": (ranks - 1) / (microbatches + ranks - 1),
        "chimera": (ranks - 2) / (2 * microbatches + ranks - 2),
        "bitpipe": (ranks - 2) / (4 * microbatches + ranks - 2),
    }
    for kind, formula in formulas.items():
        bubble = simulate(build_schedule(kind, ranks, microbatches), EQUAL).bubble
        assert bubble == pytest.approx([formula] * ranks), kind
    for chunks in (2, 3):
        schedule = build_schedule("interleaved", ranks, microbatches, chunks)
        formula = (ranks - 1) / (chunks * microbatches + ranks - 1)
        assert simulate(schedule, EQUAL).bubble == pytest.approx([formula] * ranks)


def test_bitpipe_bubble_with_backward_twice_forward():
    # mpipipe/DESIGN.md, "Baseline formulas": (D-2)/(3N+D-2) at N = D when B = 2F.
    for ranks in (2, 4, 8, 16):
        bubble = simulate(build_schedule("bitpipe", ranks, ranks), OpCosts(1, 2)).bubble
        assert bubble == pytest.approx([(ranks - 2) / (3 * ranks + ranks - 2)] * ranks)


@pytest.mark.parametrize("ranks,microbatches", SIZES)
def test_zero_bubble_schedules_beat_1f1b(ranks, microbatches):
    bubbles = {
        kind: simulate(build_schedule(kind, ranks, microbatches), EQUAL_SPLIT).bubble
        for kind in ("1f1b", "zb-h1", "zb-v")
    }
    assert max(bubbles["zb-v"]) < min(bubbles["zb-h1"])
    assert max(bubbles["zb-h1"]) < min(bubbles["1f1b"])
    # ZB-H1 idles (D-1)(F+I-W) per rank (the paper); ZB-V only rank D-1's start-up (D-1)F.
    assert bubbles["zb-h1"] == pytest.approx([(ranks - 1) / (3 * microbatches + ranks - 1)] * ranks)
    assert bubbles["zb-v"] == pytest.approx([(ranks - 1) / (6 * microbatches + ranks - 1)] * ranks)


def test_a_stage_may_mix_full_and_split_backwards():
    # D=2, N=2, F=I=W=1, B=2. Stage 1 splits micro-batch 0's backward, not 1's; stage 0 the reverse.
    schedule = from_csv("0F0,0F1,0B0,0I1,0W1\n1F0,1I0,1W0,1F1,1B1\n")
    simulation = simulate(schedule, EQUAL_SPLIT)
    starts = [{str(t.op): t.start for t in rank_ops} for rank_ops in simulation.timeline]
    assert starts[1] == {"1F0": 1, "1I0": 2, "1W0": 3, "1F1": 4, "1B1": 5, "1SYNC": 7}
    # 0B0 waits for 1I0 (ends at 3), 0I1 for 1B1 (ends at 7).
    assert starts[0] == {"0F0": 0, "0F1": 1, "0B0": 3, "0I1": 7, "0W1": 8, "0SYNC": 9}
    assert simulation.peak_activations == [2, 1]  # a B and a W both free a micro-batch


@pytest.mark.parametrize("ranks", [2, 4, 8, 16])
def test_dualpipev_idle_time_does_not_grow_with_microbatches(ranks):
    """DualPipe's table: a bubble of (PP/2-1)(F&B+B-3W), the same for every N >= 2D."""
    idle = []
    for microbatches in (2 * ranks, 3 * ranks, 4 * ranks):
        simulation = simulate(build_schedule("dualpipev", ranks, microbatches), EQUAL_SPLIT)
        assert simulation.busy == [6 * microbatches] * ranks  # 2 chunks x (F + I + W) each
        idle.append([simulation.makespan - busy for busy in simulation.busy])
        # DualPipe's activation memory: PP + 1 chunk-micro-batches of L/(2D) layers.
        assert max(simulation.peak_activations) == (2 * ranks + 1) / 2
    # Every rank idles D-1 units. The table's 2(D-1) (F&B = F + B) holds when each pair
    # runs as one unit; as two ops, a pair's forward need not wait for its backward's input.
    assert idle == [[ranks - 1] * ranks] * 3


@pytest.mark.parametrize("ranks", [2, 4, 8, 16])
def test_peak_activations(ranks):
    for microbatches in (ranks, 4 * ranks):
        one_f_one_b = simulate(build_schedule("1f1b", ranks, microbatches)).peak_activations
        assert one_f_one_b == [ranks - rank for rank in range(ranks)]
        gpipe = simulate(build_schedule("gpipe", ranks, microbatches)).peak_activations
        assert gpipe == [microbatches] * ranks
        for kind in ("chimera", "bitpipe", "zb-h1", "zb-v"):
            peaks = simulate(build_schedule(kind, ranks, microbatches)).peak_activations
            assert max(peaks) <= ranks, kind


def test_same_model_scales_compute_by_ranks_over_stages():
    schedule = build_schedule("bitpipe", 4, 8)
    plain = simulate(schedule, OpCosts(1, 2, latency=0.25))
    scaled = simulate(schedule, OpCosts(1, 2, latency=0.25), scale_by_stage_size=True)
    assert scaled.costs.forward == 0.5 and scaled.costs.backward == 1.0
    assert scaled.costs.latency == 0.25
    by_hand = simulate(schedule, OpCosts(0.5, 1, latency=0.25))
    assert scaled.timeline == by_hand.timeline
    assert plain.makespan > scaled.makespan


def swap(rank_ops: list[Op], first: str, second: str) -> None:
    i, j = rank_ops.index(Op.parse(first)), rank_ops.index(Op.parse(second))
    rank_ops[i], rank_ops[j] = rank_ops[j], rank_ops[i]


def test_swapped_ops_deadlock_names_ranks_and_ops():
    schedule = build_schedule("1f1b", 2, 2)
    assert [str(op) for op in schedule.ops[1]] == ["1F0", "1B0", "1F1", "1B1", "1SYNC"]
    swap(schedule.ops[1], "1F1", "1B1")
    with pytest.raises(ScheduleError) as caught:
        simulate(schedule)
    message = str(caught.value)
    assert "deadlock" in message and "\n" not in message
    assert "rank 0 is stuck at step 3, 0B1: it waits for 1B1 (rank 1)" in message
    assert "rank 1 is stuck at step 2, 1B1: it waits for 1F1 (rank 1)" in message
    report = caught.value.report
    assert "[0B1]" in report and "[1B1]" in report and report.count("<-- ERROR HERE") == 2
    assert isinstance(caught.value, UsageError)


def test_deadlock_in_a_bidirectional_schedule():
    schedule = build_schedule("bitpipe", 4, 4)
    swap(schedule.ops[2], "u1F2", "2F0")
    simulate(schedule)  # two independent forwards swapped still run
    swap(schedule.ops[0], "7F0", "7B0")  # the turn's backward before its own forward
    with pytest.raises(ScheduleError) as caught:
        simulate(schedule)
    message = str(caught.value)
    assert "rank 0 is stuck at step 6, 7B0: it waits for 7F0 (rank 0)" in message
    assert "rank 1 is stuck" in message and "waits for 7B0 (rank 0)" in message


@pytest.mark.parametrize(("text", "forward", "backward", "weight"), [
    ("1,2", 1, 2, 1),  # without W, a split backward halves B
    ("1,2,0.5", 1, 2, 0.5),
    ("0.5,1", 0.5, 1, 0.5),
])
def test_cost_parsing(text, forward, backward, weight):
    costs = OpCosts.parse(text)
    assert (costs.forward, costs.backward, costs.backward_weight) == (forward, backward, weight)
    assert costs.backward_input == pytest.approx(backward - weight)


@pytest.mark.parametrize("text", ["1", "1,2,3", "a,b", "-1,2", "1,2,1,1"])
def test_bad_cost_names_the_option(text):
    with pytest.raises(UsageError, match="--cost"):
        OpCosts.parse(text)
