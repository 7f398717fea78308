"""examples/: the CPU examples train for a few steps; the GPU config is checked without a GPU."""

import importlib.util
import math
import re
import sys

import numpy as np
import pytest

from mpipipe.config.load import load_config
from mpipipe.config.validate import validate_config
from mpipipe.errors import UsageError
from mpipipe.layers import Attention, MicroBatch, Recomputed
from mpipipe.layers.recompute import sublayers_within
from mpipipe.metrics import read_metrics
from mpipipe.models import loss_and_grads
from mpipipe.models.model import build_model
from mpipipe.plan import plan_run
from mpipipe.schedules import OpCosts, build_schedule, simulate
from mpipipe.schedules.partition import partition_layers

from gradcheck import finite_difference
from mpirun import REPO, mpipipe_args, run_ranks

EXAMPLES = REPO / "examples"
GPU_CONFIG = EXAMPLES / "gpt_1b_bitpipe.toml"
FEW_STEPS = ["--set", "train.steps=3", "--set", "train.log_every=1"]


@pytest.mark.parametrize("name", ["gpt_tiny", "bert_tiny"])
def test_cpu_config_trains_on_four_ranks_from_a_uniform_guess(tmp_path, name):
    run_dir = tmp_path / name
    result = run_ranks(
        4, mpipipe_args("train", f"examples/{name}.toml", *FEW_STEPS, "--out", str(run_dir)),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows] == [0, 1, 2]
    # An untrained model guesses about uniformly: its first loss is near ln(vocabulary).
    vocab_size = load_config(str(EXAMPLES / f"{name}.toml")).model.vocab_size
    assert rows[0]["loss"] == pytest.approx(math.log(vocab_size), abs=0.3)
    assert all(len(row["bubble"]) == 4 for row in rows)


def load_custom_model_example():
    spec = importlib.util.spec_from_file_location("custom_model", EXAMPLES / "custom_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_custom_model_script_trains_under_mpirun(tmp_path):
    run_dir = tmp_path / "custom"
    result = run_ranks(
        2, ["examples/custom_model.py", "--steps", "3", "--out", str(run_dir)], timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [row["step"] for row in read_metrics(run_dir)] == [0, 1, 2]
    assert "parallel-gpt: 12 layers in 2 stages, 1f1b on 2 ranks" in result.stdout


def test_parallel_block_gradients_match_finite_differences():
    example = load_custom_model_example()
    block = example.ParallelBlock(channels=8, n_head=2, hidden=16)
    rng = np.random.default_rng(0)
    params = {name: value + 0.1 * rng.normal(size=value.shape)
              for name, value in block.init_params(rng).items()}
    x = rng.normal(size=(2, 5, 8))
    weights = rng.normal(size=(2, 5, 8))  # loss = sum(weights * block(x))
    ctx = MicroBatch(tokens=None, targets=None, attention_mask=None, loss_normalizer=1.0)

    def loss() -> float:
        y, _ = block.forward(params, x.copy(), ctx)
        return float(np.sum(weights * y))

    _, cache = block.forward(params, x.copy(), ctx)
    dx, wcache = block.backward_input(params, weights.copy(), cache)
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    block.backward_weight(grads, wcache)

    for array, analytic in [(x, dx), *((params[name], grads[name]) for name in params)]:
        numeric = finite_difference(loss, array, range(array.size), step=1e-6)
        assert np.allclose(analytic.reshape(-1), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("policy", ["attention", "block"])
def test_parallel_gpt_under_recompute_computes_bitwise_the_same(policy):
    example = load_custom_model_example()
    plain = example.parallel_gpt(seq_len=8, n_layer=2, n_head=2, channels=8)
    recomputing = example.parallel_gpt(seq_len=8, n_layer=2, n_head=2, channels=8,
                                       recompute=policy)
    assert plain.param_shapes() == recomputing.param_shapes()
    inside = [sublayer for layer in recomputing.layers for sublayer in sublayers_within(layer)]
    if policy == "block":
        assert sum(isinstance(layer, Recomputed) for layer in recomputing.layers) == 2
    else:
        attentions = [layer for layer in inside if isinstance(layer, Attention)]
        assert len(attentions) == 2 and not any(a.keep_probabilities for a in attentions)
    params = plain.init_params(seed=0)
    window = np.random.default_rng(1).integers(0, example.VOCAB_SIZE, (2, 9))
    batch = MicroBatch(window[:, :-1], window[:, 1:], None, float(window[:, 1:].size))
    loss, grads = loss_and_grads(plain, params, batch)
    recomputed_loss, recomputed_grads = loss_and_grads(recomputing, params, batch)
    assert recomputed_loss == loss
    assert all(np.array_equal(recomputed_grads[key], grads[key]) for key in grads)


def gpu_config_comment() -> str:
    return "\n".join(
        line for line in GPU_CONFIG.read_text().splitlines() if line.startswith("#")
    )


def test_gpu_config_validates_for_eight_ranks_and_partitions_evenly():
    config = load_config(str(GPU_CONFIG))
    validate_config(config, world_size=8)
    with pytest.raises(UsageError, match="the job has 4 MPI ranks"):
        validate_config(config, world_size=4)
    parallel = config.parallel
    model = build_model(config.model)
    schedule = build_schedule(parallel.schedule, parallel.pipeline, parallel.microbatches)
    costs = model.costs(config.data.microbatch_size, np.dtype(config.runtime.dtype).itemsize)
    stage_layers = partition_layers(
        [cost.forward_flops + cost.backward_flops for cost in costs],
        [layer.is_body for layer in model.layers], schedule.stages, parallel.partition,
    )
    assert schedule.stages == 16
    blocks_per_stage = [
        sum(model.layers[index].is_body for index in layers) for layers in stage_layers
    ]
    assert blocks_per_stage == [2] * 16
    assert all(len(schedule.placement.chunks_on(rank)) == 4 for rank in range(8))


@pytest.mark.parametrize(("partition", "statement"), [
    ("uniform", "{ratio}x the others' compute"), ("balanced", "{ratio}x the least busy"),
])
def test_gpu_config_comment_states_how_uneven_the_ranks_work_is(partition, statement):
    config = load_config(str(GPU_CONFIG))
    model = build_model(config.model)
    schedule = build_schedule("bitpipe", 8, config.parallel.microbatches)
    costs = [cost.forward_flops + cost.backward_flops
             for cost in model.costs(config.data.microbatch_size, 4)]
    stage_layers = partition_layers(costs, [layer.is_body for layer in model.layers], 16,
                                    partition)
    stage_costs = [sum(costs[index] for index in layers) for layers in stage_layers]
    work = [sum(stage_costs[stage] for _, stage in schedule.placement.chunks_on(rank))
            for rank in range(8)]
    stated = statement.format(ratio=f"{max(work) / min(work):.1f}")
    assert stated in " ".join(gpu_config_comment().replace("#", "").split())


def test_gpu_config_comment_states_the_models_own_parameter_count_and_bubble():
    config = load_config(str(GPU_CONFIG))
    model = build_model(config.model)
    count = sum(math.prod(shape) for shape in model.param_shapes().values())
    comment = gpu_config_comment()
    stated = re.search(r"A GPT of ([\d,]+) parameters", comment)
    assert stated and int(stated[1].replace(",", "")) == count
    assert 0.9e9 < count < 1.1e9
    parallel = config.parallel
    simulation = simulate(
        build_schedule(parallel.schedule, parallel.pipeline, parallel.microbatches),
        OpCosts(forward=1, backward=2),
    )
    bubble = sum(simulation.bubble) / len(simulation.bubble)
    assert f"bubble with backward = 2 x forward is {bubble:.1%}" in comment


def test_every_example_config_loads():
    configs = sorted(EXAMPLES.glob("*.toml"))
    assert {path.stem for path in configs} >= {"gpt_tiny", "bert_tiny", "gpt_1b_bitpipe"}
    for path in configs:
        load_config(str(path))


@pytest.mark.parametrize("name", ["gpt_tiny", "bert_tiny"])
@pytest.mark.parametrize("ranks", [1, 2, 4, 8])
def test_cpu_config_runs_on_any_number_of_ranks_as_its_header_says(name, ranks):
    config = load_config(str(EXAMPLES / f"{name}.toml"))
    assert config.parallel.pipeline == 0  # every rank a pipeline rank
    plan = plan_run(config, ranks, 0)
    assert plan.schedule.ranks == ranks
    assert len(plan.stage_layers) == plan.schedule.stages
