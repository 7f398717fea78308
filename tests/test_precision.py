"""Mixed precision on the CPU: the policy, the GEMM plan, every layer in fp16 and bf16 against
float64, the master and working copies, and the loss scaler."""

from __future__ import annotations

import numpy as np
import pytest

from mpipipe.backend import Backend
from mpipipe.comm import wire
from mpipipe.config.schema import ModelConfig
from mpipipe.fused import cross_entropy_forward, layernorm_backward_weight, layernorm_forward
from mpipipe.fused import matmul as fused_matmul
from mpipipe.fused.gemm_plan import OP_N, NeedsCopy, Operand, plan_gemm
from mpipipe.layers import (
    GELU,
    MLP,
    Attention,
    Block,
    CrossEntropy,
    Embedding,
    LayerNorm,
    Linear,
    LMHead,
    MicroBatch,
)
from mpipipe.models.model import build_model
from mpipipe.optim import LossScaler
from mpipipe.plan import plan_run
from mpipipe.precision import (
    FP32,
    Precision,
    bfloat16,
    bfloat16_available,
    is_low,
    stats_dtype,
)
from mpipipe.runtime.grid import make_grid
from mpipipe.runtime.params import ParamStore

# bfloat16 cases run where ml_dtypes is installed (the test extra has it).
LOW = {"fp16": np.dtype(np.float16), **({"bf16": bfloat16()} if bfloat16_available() else {})}
# Relative error (norm of the difference over the norm of the float64 value) a layer's
# output, input gradient and weight gradients may have: a few of the type's epsilons
# (2^-10 for float16, 2^-7 for bfloat16), for the roundings a block chains.
TOLERANCE = {"fp16": 5 * 2.0**-10, "bf16": 4 * 2.0**-7}
BATCH, TIME, CHANNELS, HEADS, VOCAB = 2, 8, 16, 2, 24


def relative_error(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


# ----- the policy ---------------------------------------------------------------------------


def test_the_policy_names_each_type():
    assert Precision.of("fp32", np.float64) == Precision("fp32", np.dtype("f8"), np.dtype("f8"))
    assert not Precision.of("tf32", np.float32).low and Precision.of("tf32", np.float32).tf32
    half = Precision.of("fp16", np.float32)
    assert half.compute == np.float16 and half.low and half.loss_scaling
    assert not FP32.low
    assert is_low(np.float16) and not is_low(np.float32)
    assert not is_low(np.int16) and not is_low(np.uint16)
    assert stats_dtype(np.float16) == np.float32 and stats_dtype(np.float64) == np.float64
    with pytest.raises(ValueError):
        Precision.of("fp8", np.float32)


@pytest.mark.skipif(not bfloat16_available(), reason="ml_dtypes is not installed")
def test_bfloat16_comes_from_ml_dtypes():
    brain = Precision.of("bf16", np.float32)
    assert brain.compute == bfloat16() and brain.low and not brain.loss_scaling
    assert is_low(bfloat16()) and stats_dtype(bfloat16()) == np.float32


def test_two_byte_floats_go_to_mpi_as_their_bits():
    values = np.array([1.0, -2.5, 3.0e4], dtype=np.float16)
    assert wire(values).dtype == np.uint16 and wire(values).base is values
    assert np.array_equal(wire(values).view(np.float16), values)
    single = values.astype(np.float32)
    assert wire(single) is single


# ----- the cuBLAS plan, checked by running it as cuBLAS would, in NumPy ---------------------


def column_major(buffer, offset, rows, cols, ld):
    """The column-major (rows, cols) matrix at `offset` of a flat buffer, leading dim `ld`."""
    return np.lib.stride_tricks.as_strided(
        buffer[offset:], shape=(rows, cols), strides=(buffer.itemsize, ld * buffer.itemsize)
    )


def run_plan(left: np.ndarray, right: np.ndarray, out: np.ndarray) -> None:
    """Execute plan_gemm's calls with NumPy on the arrays' own memory, as cuBLAS reads it."""
    def flat(array):  # the whole buffer, where the view starts in it, and the operand
        root = array
        while root.base is not None:
            root = root.base
        start = array.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        operand = Operand(array.shape, tuple(stride // 8 for stride in array.strides))
        return root.reshape(-1), start // 8, operand

    (a_mem, a_at, a), (b_mem, b_at, b), (c_mem, c_at, c) = flat(right), flat(left), flat(out)
    for call in plan_gemm(b, a, c):
        for index in range(call.batch):
            shape_a = (call.m, call.k) if call.transa == OP_N else (call.k, call.m)
            shape_b = (call.k, call.n) if call.transb == OP_N else (call.n, call.k)
            matrix_a = column_major(a_mem, a_at + call.a_offset + index * call.stride_a,
                                    *shape_a, call.lda)
            matrix_b = column_major(b_mem, b_at + call.b_offset + index * call.stride_b,
                                    *shape_b, call.ldb)
            op_a = matrix_a if call.transa == OP_N else matrix_a.T
            op_b = matrix_b if call.transb == OP_N else matrix_b.T
            target = column_major(c_mem, c_at + call.c_offset + index * call.stride_c, call.m,
                                  call.n, call.ldc)
            target[...] = op_a @ op_b


def attention_views(rng, convert=lambda array: array):
    qkv = convert(rng.normal(size=(2, 5, 3 * 12)))
    q, k, v = qkv.reshape(2, 5, 3, 3, 4).transpose(2, 0, 3, 1, 4)
    return q, k, v


def gemm_cases(rng, convert=lambda array: array, empty=np.empty):
    """(name, left, right, out) for every kind of view the layers multiply; `convert` makes
    each drawn array (another type, another device) before the views are taken."""
    def draw(*shape):
        return convert(rng.normal(size=shape))

    x, w = draw(7, 5), draw(5, 3)
    q, k, v = attention_views(rng, convert)
    heads = empty((2, 5, 12)).reshape(2, 5, 3, 4).swapaxes(1, 2)  # the attention output's view
    scores = draw(2, 3, 5, 5)
    return [
        ("2-D", x, w, empty((7, 3))),
        ("weight transposed", x, draw(3, 5).T, empty((7, 3))),
        ("input transposed", draw(5, 7).T, w, empty((7, 3))),
        ("both transposed", draw(5, 7).T, draw(3, 5).T, empty((7, 3))),
        ("batched contiguous", draw(4, 7, 5), draw(4, 5, 3), empty((4, 7, 3))),
        ("batched against one matrix", draw(4, 7, 5), w, empty((4, 7, 3))),
        ("scores from head views", q, k.swapaxes(-1, -2), empty((2, 3, 5, 5))),
        ("heads into a merged view", scores, v, heads),
        ("scores transposed", scores.swapaxes(-1, -2), q, empty((2, 3, 5, 4))),
    ]


@pytest.mark.parametrize("index", range(9))
def test_the_gemm_plan_computes_the_row_major_product(index):
    name, left, right, out = gemm_cases(np.random.default_rng(index))[index]
    run_plan(left, right, out)
    np.testing.assert_allclose(out, left @ right, rtol=1e-12, err_msg=name)


def test_the_gemm_plan_asks_for_a_copy_it_cannot_express():
    # Every other column of a (7, 10) matrix: neither of its strides is 1.
    with pytest.raises(NeedsCopy):
        plan_gemm(Operand((7, 5), (10, 2)), Operand((5, 3), (3, 1)), Operand((7, 3), (3, 1)))


def test_batched_views_that_do_not_collapse_loop_over_the_first_axis():
    rng = np.random.default_rng(1)
    q, k, _ = attention_views(rng)
    calls = plan_gemm(*(Operand(a.shape, tuple(s // 8 for s in a.strides))
                        for a in (q, k.swapaxes(-1, -2), np.empty((2, 3, 5, 5)))))
    assert len(calls) == 2 and all(call.batch == 3 for call in calls)


# ----- the CPU's low-precision arithmetic ---------------------------------------------------


@pytest.mark.parametrize("name", LOW)
def test_cpu_matmul_accumulates_in_float32_and_rounds_once(name):
    dtype = LOW[name]
    rng = np.random.default_rng(2)
    left, right = (rng.normal(size=shape).astype(dtype) for shape in ((6, 64), (64, 5)))
    exact = left.astype(np.float32) @ right.astype(np.float32)
    assert np.array_equal(fused_matmul(left, right), exact.astype(dtype))
    assert fused_matmul(left, right, dtype=np.float32).dtype == np.float32
    np.testing.assert_array_equal(fused_matmul(left, right, dtype=np.float32), exact)
    with pytest.raises(TypeError):
        fused_matmul(left, right.astype(np.float32))


@pytest.mark.parametrize("name", LOW)
def test_statistics_and_loss_stay_float32_and_gradients_add_into_float32(name):
    dtype = LOW[name]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 16)).astype(dtype)
    weight, bias = np.ones(16, dtype), np.zeros(16, dtype)
    y, mean, rstd = layernorm_forward(x, weight, bias)
    assert y.dtype == dtype and mean.dtype == rstd.dtype == np.float32
    dweight, dbias = np.zeros(16, np.float32), np.zeros(16, np.float32)
    layernorm_backward_weight(x, x, mean, rstd, dweight, dbias)
    assert dweight.dtype == np.float32 and np.isfinite(dweight).all()
    loss, probs = cross_entropy_forward(x, np.arange(4), -100, 4.0)
    assert loss.dtype == probs.dtype == np.float32


# ----- every layer: the low-precision forward and input gradient against float64 ------------


def context(seed: int = 0) -> MicroBatch:
    rng = np.random.default_rng(seed)
    mask = np.ones((BATCH, TIME), dtype=bool)
    mask[1, 5:] = False
    targets = rng.integers(0, VOCAB, size=(BATCH, TIME))
    return MicroBatch(rng.integers(0, VOCAB, size=(BATCH, TIME)), targets, mask, 11.0)


LAYERS = {
    "linear": (lambda: Linear(CHANNELS, 3 * CHANNELS), "hidden"),
    "layernorm": (lambda: LayerNorm(CHANNELS), "hidden"),
    "gelu": (lambda: GELU(CHANNELS), "hidden"),
    "attention-causal": (lambda: Attention(CHANNELS, HEADS, causal=True), "hidden"),
    "attention-padded": (lambda: Attention(CHANNELS, HEADS, causal=False), "hidden"),
    "mlp": (lambda: MLP(CHANNELS, 4 * CHANNELS), "hidden"),
    "block": (lambda: Block(CHANNELS, HEADS, 4 * CHANNELS, causal=True), "hidden"),
    "embedding": (lambda: Embedding(VOCAB, TIME, CHANNELS), "tokens"),
    "lm-head-untied": (lambda: LMHead(CHANNELS, VOCAB, tie_embeddings=False), "hidden"),
    "lm-head-tied": (lambda: LMHead(CHANNELS, VOCAB, tie_embeddings=True), "hidden"),
    "cross-entropy": (lambda: CrossEntropy(VOCAB), "logits"),
}


def layer_inputs(layer, kind: str, rng):
    shapes = layer.param_shapes()
    params = {name: rng.normal(0.0, 0.3, shape) for name, shape in shapes.items()}
    for name in params:
        if name.endswith("weight") and len(shapes[name]) == 1:
            params[name] += 1.0  # LayerNorm gains near 1
    if kind == "tokens":
        return params, context().tokens
    if kind == "logits":
        return params, rng.normal(0.0, 2.0, (BATCH, TIME, VOCAB))
    return params, rng.normal(0.0, 1.0, (BATCH, TIME, CHANNELS))


def run_layer(layer, params, x, dtype, upstream):
    """Forward, then the input gradient (None for token inputs), computing in `dtype`."""
    cast = {name: value.astype(dtype) for name, value in params.items()}
    grads = {name: np.zeros(value.shape, stats_dtype(dtype)) for name, value in params.items()}
    x_in = x if x.dtype.kind == "i" else x.astype(dtype)
    y, cache = layer.forward(cast, x_in, context())
    dy = np.asarray(upstream(y)).astype(stats_dtype(dtype) if y.ndim == 0 else dtype)
    dx = layer.backward(cast, grads, dy, cache)
    return y, dx, grads


@pytest.mark.parametrize("name", LOW)
@pytest.mark.parametrize("layer_name", LAYERS)
def test_low_precision_layer_is_within_tolerance_of_float64(layer_name, name):
    make, kind = LAYERS[layer_name]
    layer = make()
    rng = np.random.default_rng(4)
    params, x = layer_inputs(layer, kind, rng)
    upstream_rng = np.random.default_rng(5)
    upstream_values = {}

    def upstream(y):  # the same upstream gradient for both runs
        if y.shape not in upstream_values:
            upstream_values[y.shape] = upstream_rng.normal(size=y.shape) if y.ndim else 1.0
        return upstream_values[y.shape]

    y64, dx64, grads64 = run_layer(layer, params, x, np.float64, upstream)
    y, dx, grads = run_layer(layer, params, x, LOW[name], upstream)
    assert y.dtype == (np.float32 if y.ndim == 0 else LOW[name]), "stores in the compute type"
    assert relative_error(y, y64) < TOLERANCE[name], "forward"
    if dx64 is not None:
        assert dx.dtype == LOW[name]
        assert relative_error(dx, dx64) < TOLERANCE[name], "input gradient"
    for key, value in grads.items():
        assert value.dtype == np.float32, f"{key}: gradients accumulate in float32"
        assert relative_error(value, grads64[key]) < TOLERANCE[name], key


# ----- master weights and their working copies ----------------------------------------------


def tiny_plan(precision: str):
    from mpipipe.config.schema import Config

    config = Config()
    config.model = ModelConfig(vocab_size=64, seq_len=8, n_layer=2, n_head=2, d_model=16)
    config.data.source = "random"
    config.runtime.precision = precision
    config.parallel.pipeline = 1
    return plan_run(config, 1, 0)


@pytest.mark.parametrize("name", LOW)
def test_layers_read_working_copies_cast_from_the_float32_master(name):
    plan = tiny_plan(name)
    backend = Backend(np, np.float32, "cpu")
    store = ParamStore.create(plan.model, plan.stage_layers, plan.schedule.placement,
                              make_grid(1, 1, 1, 0), backend, seed=3, compute_dtype=LOW[name])
    bucket = store.buckets[0]
    assert bucket.param.dtype == bucket.grad.dtype == np.float32
    assert bucket.working.dtype == LOW[name]
    assert np.array_equal(bucket.working, bucket.param.astype(LOW[name]))
    layer_params = store.layer_params(1)
    assert all(value.dtype == LOW[name] for value in layer_params.values())
    bucket.param += 0.5
    store.refresh_working()
    assert np.array_equal(bucket.working, bucket.param.astype(LOW[name]))
    assert all(value.dtype == np.float32 for value in store.host_params().values())


def test_without_a_low_type_the_working_copy_is_the_master_itself():
    plan = tiny_plan("fp32")
    store = ParamStore.create(plan.model, plan.stage_layers, plan.schedule.placement,
                              make_grid(1, 1, 1, 0), Backend(np, np.float64, "cpu"), seed=3)
    assert all(bucket.working is bucket.param for bucket in store.buckets)


def test_a_low_precision_model_trains_like_float32_for_a_few_steps():
    from mpipipe.models.reference import loss_and_grads

    model = build_model(ModelConfig(vocab_size=64, seq_len=8, n_layer=2, n_head=2, d_model=16))
    batch = context()
    batch = MicroBatch(batch.tokens, batch.targets, None, float(batch.targets.size))
    params64 = model.init_params(seed=1)
    loss64, _ = loss_and_grads(model, params64, batch)
    for name, dtype in LOW.items():
        params = {key: value.astype(dtype) for key, value in params64.items()}
        loss, grads = loss_and_grads(model, params, batch)
        assert abs(loss - loss64) / loss64 < TOLERANCE[name], name


# ----- the loss scaler ----------------------------------------------------------------------


def test_the_scale_halves_on_overflow_and_doubles_after_a_window_of_good_steps():
    scaler = LossScaler(scale=1024.0, window=3, enabled=True)
    scaler.update(overflow=True)
    assert scaler.scale == 512.0 and scaler.good_steps == 0
    for _ in range(2):
        scaler.update(overflow=False)
    assert scaler.scale == 512.0 and scaler.good_steps == 2
    scaler.update(overflow=False)
    assert scaler.scale == 1024.0 and scaler.good_steps == 0
    floor = LossScaler(scale=1.0, window=3, enabled=True)
    floor.update(overflow=True)
    assert floor.scale == 1.0 and floor.at_minimum
    off = LossScaler()
    off.update(overflow=True)
    assert off.scale == 1.0
