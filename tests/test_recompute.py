"""Activation recomputation: every policy computes bitwise what `none` computes, for the
full backward and the I+W split, while its caches really hold less."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mpipipe.config.load import load_config
from mpipipe.config.schema import ModelConfig
from mpipipe.layers import MLP, Attention, Block, LayerNorm, MicroBatch, Recomputed, apply_recompute
from mpipipe.layers.memory import arrays_within, live_bytes
from mpipipe.models import build_model, loss_and_grads
from mpipipe.plan import plan_run

from cupy_device import cupy, needs_gpu
from oneline import one_line_error

BATCH, TIME, CHANNELS, HEADS = 2, 6, 8, 2
POLICIES = ["attention", "block"]
DTYPES = [np.float64, np.float32]


def padding_mask(xp=np):
    mask = np.ones((BATCH, TIME), dtype=bool)
    mask[0, 4:] = False
    return xp.asarray(mask)


def block_and_context(causal: bool, policy: str, xp=np):
    block = apply_recompute(Block(CHANNELS, HEADS, 4 * CHANNELS, causal), policy)
    mask = None if causal else padding_mask(xp)
    return block, MicroBatch(None, None, mask, 1.0)


def random_arrays(layer, dtype, xp=np, seed: int = 0):
    """Parameters far from the usual init, two inputs and two upstream gradients."""
    rng = np.random.default_rng(seed)
    params = {name: xp.asarray(rng.normal(0.0, 0.5, shape), dtype=dtype)
              for name, shape in layer.param_shapes().items()}
    inputs = [xp.asarray(rng.normal(size=(BATCH, TIME, CHANNELS)), dtype=dtype) for _ in "xy"]
    upstream = [xp.asarray(rng.normal(size=(BATCH, TIME, CHANNELS)), dtype=dtype) for _ in "xy"]
    return params, inputs, upstream


def run_full_and_split(layer, params, inputs, upstream, ctx):
    """Outputs, then F1 F2 B2 B1 and F1 F2 I2 I1 W2 W1: (outputs, full dx, full grads,
    split dx, split grads), so the deferred W halves follow later I halves and forwards."""
    def zeros():
        return {name: value * 0 for name, value in params.items()}

    results = [layer.forward(params, x, ctx) for x in inputs]
    outputs = [y for y, _ in results]
    full_grads = zeros()
    full_dx = [layer.backward(params, full_grads, upstream[index], results[index][1])
               for index in reversed(range(len(inputs)))]
    caches = [layer.forward(params, x, ctx)[1] for x in inputs]
    halves = [layer.backward_input(params, upstream[index], caches[index])
              for index in reversed(range(len(inputs)))]
    split_grads = zeros()
    for _, wcache in halves:
        layer.backward_weight(split_grads, wcache)
    return outputs, full_dx, full_grads, [dx for dx, _ in halves], split_grads


def assert_bitwise(actual: list, expected: list, xp=np) -> None:
    for got, want in zip(actual, expected, strict=True):
        if isinstance(want, dict):
            assert got.keys() == want.keys()
            for name in want:
                assert bool(xp.array_equal(got[name], want[name])), name
        else:
            assert all(bool(xp.array_equal(g, w)) for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: dtype.__name__)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "padding"])
@pytest.mark.parametrize("policy", POLICIES)
def test_block_under_policy_is_bitwise_none(policy, causal, dtype):
    plain, ctx = block_and_context(causal, "none")
    recomputing, _ = block_and_context(causal, policy)
    params, inputs, upstream = random_arrays(plain, dtype)
    expected = run_full_and_split(plain, params, inputs, upstream, ctx)
    actual = run_full_and_split(recomputing, params, inputs, upstream, ctx)
    assert_bitwise(actual, expected)
    # The two halves of the split agree with the full backward too.
    assert_bitwise(actual[3:], actual[1:3])


@needs_gpu
@pytest.mark.parametrize("policy", POLICIES)
def test_block_under_policy_is_bitwise_none_on_the_gpu(policy):
    plain, ctx = block_and_context(False, "none", cupy)
    recomputing, _ = block_and_context(False, policy, cupy)
    params, inputs, upstream = random_arrays(plain, np.float32, cupy)
    expected = run_full_and_split(plain, params, inputs, upstream, ctx)
    actual = run_full_and_split(recomputing, params, inputs, upstream, ctx)
    assert_bitwise(actual, expected, cupy)


@pytest.mark.parametrize("make", [
    lambda: Attention(CHANNELS, HEADS, causal=True),
    lambda: MLP(CHANNELS, 4 * CHANNELS),
    lambda: LayerNorm(CHANNELS),
], ids=["attention", "mlp", "layernorm"])
def test_any_layer_can_be_recomputed(make):
    """The wrapper knows nothing of blocks: any layer that keeps its input works."""
    plain = make()
    params, inputs, upstream = random_arrays(plain, np.float64)
    ctx = MicroBatch(None, None, None, 1.0)
    expected = run_full_and_split(plain, params, inputs, upstream, ctx)
    actual = run_full_and_split(Recomputed(make()), params, inputs, upstream, ctx)
    assert_bitwise(actual, expected)


def probability_arrays(cache) -> list:
    return [array for array in arrays_within(cache) if array.shape == (BATCH, HEADS, TIME, TIME)]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "padding"])
def test_caches_keep_what_the_policy_says(causal):
    caches = {}
    for policy in ["none", *POLICIES]:
        block, ctx = block_and_context(causal, policy)
        params, (x, _), _ = random_arrays(block, np.float64)
        caches[policy] = block.forward(params, x, ctx)[1]
    assert len(probability_arrays(caches["none"])) == 1
    assert probability_arrays(caches["attention"]) == []
    scores_bytes = BATCH * HEADS * TIME * TIME * 8
    assert live_bytes(caches["attention"]) == live_bytes(caches["none"]) - scores_bytes
    # block: the input and the context's mask, nothing else.
    kept = [array for array in arrays_within(caches["block"]) if array is not ctx.attention_mask]
    assert len(kept) == 1 and kept[0] is x


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: dtype.__name__)
@pytest.mark.parametrize("policy", ["none", *POLICIES])
def test_activation_estimate_equals_the_bytes_the_cache_holds(policy, dtype):
    """The cost model's activation bytes (formulas) against the arrays themselves."""
    block, ctx = block_and_context(False, policy)
    params, (x, _), _ = random_arrays(block, dtype)
    _, cache = block.forward(params, x, ctx)
    estimate = block.cost(BATCH, TIME, np.dtype(dtype).itemsize).activation_bytes
    assert live_bytes(cache) == estimate + ctx.attention_mask.nbytes


SMALL = ModelConfig(vocab_size=23, seq_len=TIME, n_layer=2, n_head=HEADS, d_model=CHANNELS)


def model_batch(kind: str) -> MicroBatch:
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, SMALL.vocab_size, (BATCH, TIME))
    targets = rng.integers(0, SMALL.vocab_size, (BATCH, TIME))
    mask = padding_mask() if kind == "bert" else None
    return MicroBatch(tokens, targets, mask, float(targets.size))


@pytest.mark.parametrize("kind", ["gpt", "bert"])
@pytest.mark.parametrize("policy", POLICIES)
def test_model_under_policy_has_the_same_parameters_loss_and_gradients(kind, policy):
    config = replace(SMALL, kind=kind)
    plain, recomputing = build_model(config), build_model(config, recompute=policy)
    assert recomputing.param_shapes() == plain.param_shapes()
    assert recomputing.tied_keys() == plain.tied_keys()
    assert [layer.is_body for layer in recomputing.layers] == [
        layer.is_body for layer in plain.layers
    ]
    params = plain.init_params(seed=3)
    again = recomputing.init_params(seed=3)
    assert all(np.array_equal(again[key], value) for key, value in params.items())
    batch = model_batch(kind)
    loss, grads = loss_and_grads(plain, params, batch)
    recomputed_loss, recomputed_grads = loss_and_grads(recomputing, params, batch)
    assert recomputed_loss == loss
    assert all(np.array_equal(recomputed_grads[key], grad) for key, grad in grads.items())


def test_block_policy_cuts_the_models_cache_to_the_block_inputs():
    config = replace(SMALL, n_layer=4)
    batch = model_batch("gpt")
    held = {}
    for policy in ["none", "block"]:
        model = build_model(config, recompute=policy)
        params = model.init_params(seed=0)
        x, caches = batch.tokens, []
        for index, layer in enumerate(model.layers[:-3]):  # embedding and blocks
            x, cache = layer.forward(model.layer_arrays(params, index), x, batch)
            caches.append(cache)
        held[policy] = live_bytes(caches) - live_bytes(batch)
    block_inputs = config.n_layer * BATCH * TIME * CHANNELS * 8
    assert held["block"] == block_inputs
    assert held["none"] > 10 * block_inputs


def test_recomputed_cost_adds_a_forward_to_the_backward():
    block = Block(CHANNELS, HEADS, 4 * CHANNELS, causal=True)
    plain = block.cost(BATCH, TIME, 8)
    wrapped = Recomputed(block).cost(BATCH, TIME, 8)
    assert wrapped.forward_flops == plain.forward_flops
    assert wrapped.backward_flops == plain.backward_flops + plain.forward_flops
    assert wrapped.activation_bytes == wrapped.input_bytes == BATCH * TIME * CHANNELS * 8


def test_unknown_policy_is_one_line():
    # The config's choices give users the message; the layers' own check is for API callers.
    one_line_error(lambda: apply_recompute(LayerNorm(CHANNELS), "blocks"),
                   ["recompute: unknown policy 'blocks' (did you mean 'block'?)"], ValueError)
    one_line_error(lambda: build_model(SMALL, recompute="all"),
                   ["'all'", "use one of none, attention, block"], ValueError)



@pytest.mark.parametrize("policy", ["none", "attention", "block"])
def test_the_run_plan_builds_the_model_with_the_configured_policy(policy):
    config = load_config(None, ["data.source=random", f"runtime.recompute={policy}"])
    model = plan_run(config, world_size=1, world_rank=0).model
    blocks = [layer for layer in model.layers if layer.is_body]
    assert blocks
    assert all(isinstance(layer, Recomputed) == (policy == "block") for layer in blocks)
    attentions = [layer.layer.sublayers["attn"] if isinstance(layer, Recomputed)
                  else layer.sublayers["attn"] for layer in blocks]
    assert all(attn.keep_probabilities == (policy != "attention") for attn in attentions)
