"""The CuPy path against the NumPy path, in every precision: the low-precision GEMM on every
view the layers use, each layer's forward and backward, and a whole GPT step.

Skipped where CuPy sees no GPU; jobs/local/gpu_check.sh runs them on a GPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from mpipipe import fused
from mpipipe.config.schema import ModelConfig
from mpipipe.layers import MicroBatch
from mpipipe.models.model import build_model
from mpipipe.models.reference import loss_and_grads
from mpipipe.precision import Precision, bfloat16_available, stats_dtype

from cupy_device import cupy, needs_gpu
from test_precision import LAYERS, context, gemm_cases, layer_inputs, relative_error

PRECISIONS = ["fp32", "fp16"] + (["bf16"] if bfloat16_available() else [])
# CuPy and NumPy sum in different orders; the results agree to a few of the type's epsilons.
TOLERANCE = {"fp32": 1e-5, "fp16": 4 * 2.0**-10, "bf16": 4 * 2.0**-7}

pytestmark = [pytest.mark.gpu, needs_gpu]


def compute_dtype(precision: str) -> np.dtype:
    return Precision.of(precision, np.float32).compute


def on_gpu(value):
    return cupy.asarray(value) if isinstance(value, np.ndarray) else value


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("index", range(9))
def test_gemm_on_every_view_matches_numpy(precision, index):
    dtype = compute_dtype(precision)
    name, left, right, _ = gemm_cases(np.random.default_rng(index),
                                      lambda array: array.astype(dtype))[index]
    expected = fused.matmul(left, right).astype(np.float64)
    _, gpu_left, gpu_right, gpu_out = gemm_cases(
        np.random.default_rng(index), lambda array: cupy.asarray(array.astype(dtype)),
        lambda shape: cupy.empty(shape, dtype),
    )[index]
    result = fused.matmul(gpu_left, gpu_right, out=gpu_out)
    assert result is gpu_out and result.dtype == dtype
    error = relative_error(cupy.asnumpy(result).astype(np.float64), expected)
    assert error < TOLERANCE[precision], name
    if precision != "fp32":
        wide = fused.matmul(gpu_left, gpu_right, dtype=np.float32)
        assert wide.dtype == np.float32
        error = relative_error(cupy.asnumpy(wide), fused.matmul(left, right, dtype=np.float32))
        assert error < 1e-5, name


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("layer_name", LAYERS)
def test_cupy_layer_matches_numpy_layer(layer_name, precision):
    make, kind = LAYERS[layer_name]
    layer = make()
    dtype = compute_dtype(precision)
    params, x = layer_inputs(layer, kind, np.random.default_rng(4))
    cast = {name: value.astype(dtype) for name, value in params.items()}
    x = x if kind == "tokens" else x.astype(dtype)
    ctx = context()
    gpu_ctx = MicroBatch(*(on_gpu(value) for value in (ctx.tokens, ctx.targets,
                                                       ctx.attention_mask)), ctx.loss_normalizer)
    results = []
    for xp_params, xp_x, xp_ctx, move in (
        (cast, x, ctx, lambda value: value),
        ({n: cupy.asarray(v) for n, v in cast.items()}, cupy.asarray(x), gpu_ctx, on_gpu),
    ):
        grads = {n: move(np.zeros(v.shape, stats_dtype(dtype))) for n, v in cast.items()}
        y, cache = layer.forward(xp_params, xp_x, xp_ctx)
        shape = y.shape
        upstream = np.random.default_rng(5).normal(size=shape) if shape else 1.0
        dy = move(np.asarray(upstream).astype(stats_dtype(dtype) if not shape else dtype))
        dx = layer.backward(xp_params, grads, dy, cache)
        host = cupy.asnumpy if move is on_gpu else np.asarray
        results.append((host(y), None if dx is None else host(dx),
                        {n: host(g) for n, g in grads.items()}))
    (y, dx, grads), (gpu_y, gpu_dx, gpu_grads) = results
    assert gpu_y.dtype == y.dtype
    assert relative_error(gpu_y.astype(np.float64), y.astype(np.float64)) < TOLERANCE[precision]
    if dx is not None:
        assert relative_error(gpu_dx.astype(np.float64), dx.astype(np.float64)) \
            < TOLERANCE[precision]
    for name, grad in grads.items():
        assert relative_error(gpu_grads[name], grad) < TOLERANCE[precision], name


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_whole_gpt_step_on_the_gpu_matches_the_cpu(precision):
    dtype = compute_dtype(precision)
    model = build_model(ModelConfig(vocab_size=96, seq_len=32, n_layer=2, n_head=4, d_model=64))
    rng = np.random.default_rng(6)
    window = rng.integers(0, 96, size=(4, 33))
    batch = MicroBatch(window[:, :-1], window[:, 1:], None, float(window[:, 1:].size))
    params = {key: value.astype(dtype) for key, value in model.init_params(seed=2).items()}
    loss, grads = loss_and_grads(model, params, batch)
    gpu_batch = MicroBatch(cupy.asarray(batch.tokens), cupy.asarray(batch.targets), None,
                           batch.loss_normalizer)
    gpu_params = {key: cupy.asarray(value) for key, value in params.items()}
    gpu_loss, gpu_grads = loss_and_grads(model, gpu_params, gpu_batch)
    assert abs(gpu_loss - loss) / loss < TOLERANCE[precision]
    for key, grad in grads.items():
        assert relative_error(cupy.asnumpy(gpu_grads[key]).astype(np.float64),
                              np.asarray(grad).astype(np.float64)) < 4 * TOLERANCE[precision], key
