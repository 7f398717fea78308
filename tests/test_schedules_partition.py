"""Layers to stages: uniform blocks, and the balanced cut against brute force."""

import itertools
import random

import pytest

from mpipipe.errors import UsageError
from mpipipe.schedules import partition_layers, stages_reason

# A GPT-like model: embedding, 8 blocks, final norm, head + loss.
GPT_BODY = [False] + [True] * 8 + [False, False]


def covers_in_order(ranges, layers):
    return [index for stage in ranges for index in stage] == list(range(layers))


def test_uniform_puts_embedding_first_and_head_last():
    ranges = partition_layers([1.0] * 11, GPT_BODY, 4, "uniform")
    assert ranges == [range(0, 3), range(3, 5), range(5, 7), range(7, 11)]
    assert partition_layers([1.0] * 11, GPT_BODY, 1, "uniform") == [range(0, 11)]


def test_uniform_keeps_a_non_body_layer_with_the_block_before_it():
    is_body = [False, True, True, False, True, True, False]
    assert partition_layers([1.0] * 7, is_body, 2, "uniform") == [range(0, 4), range(4, 7)]


def test_uniform_error_names_numbers_that_work():
    is_body = [False] + [True] * 6 + [False, False]
    with pytest.raises(UsageError) as caught:
        partition_layers([1.0] * 9, is_body, 8, "uniform", "gpt", stages_reason("bitpipe", 4))
    assert str(caught.value) == (
        "gpt has 6 transformer blocks, which cannot be split evenly into 8 stages "
        "(bitpipe with 4 pipeline ranks uses 2*4 stages): use model.n_layer = 8, 16, 24 ... "
        "or parallel.partition = 'balanced'"
    )


def brute_force_best(costs, stages):
    best = None
    for cuts in itertools.combinations(range(1, len(costs)), stages - 1):
        bounds = [0, *cuts, len(costs)]
        slowest = max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds))
        best = slowest if best is None else min(best, slowest)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_balanced_matches_brute_force(seed):
    generator = random.Random(seed)
    layers = generator.randint(1, 9)
    stages = generator.randint(1, layers)
    costs = [generator.choice([0.0, 0.1, 0.3, 1.0, 2.5, 7.0]) for _ in range(layers)]
    ranges = partition_layers(costs, [True] * layers, stages, "balanced")
    assert len(ranges) == stages and all(len(stage) >= 1 for stage in ranges)
    assert covers_in_order(ranges, layers)
    slowest = max(sum(costs[index] for index in stage) for stage in ranges)
    assert slowest == pytest.approx(brute_force_best(costs, stages))


def test_balanced_gives_the_heavy_head_its_own_stage():
    costs = [1.0] + [2.0] * 6 + [0.1, 8.0]
    ranges = partition_layers(costs, [False] + [True] * 6 + [False, False], 4, "balanced")
    assert ranges[-1] == range(8, 9)
    assert covers_in_order(ranges, 9)


@pytest.mark.parametrize(
    "stages,method,words",
    [
        (5, "balanced", ["gpt has 4 layers", "5 stages", "at least 5 layers"]),
        (3, "uniform", ["gpt has 2 transformer blocks", "model.n_layer = 3, 6, 9"]),
        (2, "greedy", ["parallel.partition", "'greedy'", "uniform, balanced"]),
    ],
)
def test_partition_errors(stages, method, words):
    with pytest.raises(UsageError) as caught:
        partition_layers([1.0] * 4, [False, True, True, False], stages, method, "gpt")
    for word in words:
        assert word in str(caught.value)
