"""Launch the CUDA kernels of kernels/*.cu (installed as mpipipe.cuda_kernels) on CuPy arrays.

Each .cu file is compiled once per process with NVRTC through
`cupy.RawModule` and cached. Kernels come in `_float` and `_double`
flavours and, where layers run them on activations, `_half` and
`_bfloat16` ones, picked from the arrays' dtype. A 2-byte kernel computes
in float32 and keeps its statistics (LayerNorm's mean and rstd, softmax
probabilities, losses) and the gradients it adds to in float32. Inputs are
made C-contiguous; arrays updated in place must already be.
"""

from __future__ import annotations

import math
from importlib.resources import files
from pathlib import Path

import numpy as np

from mpipipe.backend import array_module
from mpipipe.precision import stats_dtype

KERNEL_PACKAGE = "mpipipe.cuda_kernels"
COMPILE_OPTIONS = ("--std=c++17",)
INCLUDE_LINE = '#include "common.cuh"'
ELEMENTWISE_THREADS = 256
MAX_ELEMENTWISE_BLOCKS = 8192
LAYERNORM_MAX_THREADS = 256
CROSS_ENTROPY_MAX_THREADS = 1024
WEIGHT_TILE_ROWS = 8  # blockDim.y of layernorm_weight_partials
WEIGHT_ROWS_PER_TILE = 64  # rows one block of layernorm_weight_partials sums
MAX_WEIGHT_TILES = 1024

_modules: dict[str, object] = {}


def on_gpu(array) -> bool:
    """Whether `array` is a CuPy array, so the CUDA kernel runs instead of the NumPy twin."""
    return array_module(array) is not np


def kernel_folder():
    """The installed kernel sources, or a source checkout's kernels/ (run without installing,
    as jobs/local/gpu_check.sh does on a GPU node)."""
    try:
        return files(KERNEL_PACKAGE)
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "kernels"


def kernel_source(stem: str) -> str:
    """The source of kernels/<stem>.cu with common.cuh pasted in, as NVRTC compiles it."""
    kernels = kernel_folder()
    source = kernels.joinpath(f"{stem}.cu").read_text()
    # NVRTC sees a string, not a folder, so the shared header is inlined.
    return source.replace(INCLUDE_LINE, kernels.joinpath("common.cuh").read_text())


def _kernel(stem: str, name: str, dtype):
    import cupy

    module = _modules.get(stem)
    if module is None:
        module = cupy.RawModule(code=kernel_source(stem), options=COMPILE_OPTIONS)
        _modules[stem] = module
    return module.get_function(f"{name}_{_flavour(dtype)}")


FLAVOURS = {"float32": "float", "float64": "double", "float16": "half", "bfloat16": "bfloat16"}


def _flavour(dtype) -> str:
    flavour = FLAVOURS.get(np.dtype(dtype).name)
    if flavour is None:
        raise TypeError(
            f"fused CUDA kernels take float32, float64, float16 or bfloat16 arrays, got {dtype}"
        )
    return flavour


def _scalar(value, dtype):
    """A kernel scalar argument of the type the kernel for `dtype` computes in."""
    return stats_dtype(dtype).type(value)


def _contiguous(dtype, *arrays):
    """The arrays as C-contiguous CuPy arrays of one float type."""
    import cupy

    for array in arrays:
        if array.dtype != dtype:
            raise TypeError(f"fused CUDA kernel: mixed dtypes {dtype} and {array.dtype}")
    return [cupy.ascontiguousarray(array) for array in arrays]


def _require_contiguous(dtype, *arrays) -> None:
    for array in arrays:
        if array.dtype != dtype or not array.flags.c_contiguous:
            raise ValueError(
                f"fused CUDA kernel updates arrays in place: they must be C-contiguous {dtype}, "
                f"got {array.dtype} with strides {array.strides}"
            )


def _targets(targets1d):
    """Targets as contiguous int64 on the GPU (the kernels read `long long`)."""
    import cupy

    return cupy.ascontiguousarray(cupy.asarray(targets1d, dtype=cupy.int64))


def _elementwise_blocks(count: int) -> int:
    return min(math.ceil(count / ELEMENTWISE_THREADS), MAX_ELEMENTWISE_BLOCKS)


def _row_threads(columns: int, most: int) -> int:
    """Threads for a one-block-per-row kernel: a multiple of 32, at most `most`."""
    return min(most, 32 * max(1, math.ceil(columns / 32)))


def gelu_forward(x):
    import cupy

    (x,) = _contiguous(x.dtype, x)
    y = cupy.empty_like(x)
    if x.size:
        kernel = _kernel("gelu", "gelu_forward", x.dtype)
        kernel((_elementwise_blocks(x.size),), (ELEMENTWISE_THREADS,), (y, x, np.int64(x.size)))
    return y


def gelu_backward(x, dy):
    import cupy

    x, dy = _contiguous(x.dtype, x, dy)
    dx = cupy.empty_like(x)
    if x.size:
        kernel = _kernel("gelu", "gelu_backward", x.dtype)
        kernel(
            (_elementwise_blocks(x.size),), (ELEMENTWISE_THREADS,), (dx, x, dy, np.int64(x.size))
        )
    return dx


def layernorm_forward(x, weight, bias, eps: float):
    import cupy

    x, weight, bias = _contiguous(x.dtype, x, weight, bias)
    columns = x.shape[-1]
    y = cupy.empty_like(x)
    mean = cupy.empty(x.shape[:-1], dtype=stats_dtype(x.dtype))
    rstd = cupy.empty(x.shape[:-1], dtype=stats_dtype(x.dtype))
    if mean.size:
        kernel = _kernel("layernorm", "layernorm_forward", x.dtype)
        kernel(
            (mean.size,),
            (_row_threads(columns, LAYERNORM_MAX_THREADS),),
            (y, mean, rstd, x, weight, bias, np.int32(columns), _scalar(eps, x.dtype)),
        )
    return y, mean, rstd


def layernorm_backward_input(dy, x, weight, mean, rstd):
    import cupy

    dy, x, weight = _contiguous(x.dtype, dy, x, weight)
    mean, rstd = _contiguous(stats_dtype(x.dtype), mean, rstd)
    columns = x.shape[-1]
    dx = cupy.empty_like(x)
    if mean.size:
        kernel = _kernel("layernorm", "layernorm_backward_input", x.dtype)
        kernel(
            (mean.size,),
            (_row_threads(columns, LAYERNORM_MAX_THREADS),),
            (dx, dy, x, weight, mean, rstd, np.int32(columns)),
        )
    return dx


def layernorm_backward_weight(dy, x, mean, rstd, dweight, dbias) -> None:
    import cupy

    stats = stats_dtype(x.dtype)
    dy, x = _contiguous(x.dtype, dy, x)
    mean, rstd = _contiguous(stats, mean, rstd)
    _require_contiguous(stats, dweight, dbias)
    columns = x.shape[-1]
    rows = mean.size
    if rows == 0:
        return
    tiles = min(math.ceil(rows / WEIGHT_ROWS_PER_TILE), MAX_WEIGHT_TILES)
    partial_dweight = cupy.empty((tiles, columns), dtype=stats)
    partial_dbias = cupy.empty((tiles, columns), dtype=stats)
    partials = _kernel("layernorm", "layernorm_weight_partials", x.dtype)
    partials(
        (math.ceil(columns / 32), tiles),
        (32, WEIGHT_TILE_ROWS),
        (partial_dweight, partial_dbias, dy, x, mean, rstd, np.int64(rows), np.int32(columns)),
    )
    accumulate = _kernel("layernorm", "layernorm_weight_accumulate", stats)
    accumulate(
        (math.ceil(columns / ELEMENTWISE_THREADS),),
        (ELEMENTWISE_THREADS,),
        (dweight, dbias, partial_dweight, partial_dbias, np.int32(tiles), np.int32(columns)),
    )


def cross_entropy_forward(logits2d, targets1d, ignore_index: int, normalizer: float):
    import cupy

    (logits2d,) = _contiguous(logits2d.dtype, logits2d)
    targets1d = _targets(targets1d)
    rows, vocab = logits2d.shape
    stats = stats_dtype(logits2d.dtype)
    probs = cupy.empty((rows, vocab), dtype=stats)
    losses = cupy.zeros(rows, dtype=stats)
    if rows:
        kernel = _kernel("cross_entropy", "cross_entropy_forward", logits2d.dtype)
        kernel(
            (rows,),
            (_row_threads(vocab, CROSS_ENTROPY_MAX_THREADS),),
            (probs, losses, logits2d, targets1d, np.int32(vocab), np.int64(ignore_index)),
        )
    loss = (losses.sum(dtype=cupy.float64) / normalizer).astype(stats)
    return loss, probs


def cross_entropy_backward(probs2d, targets1d, ignore_index: int, normalizer: float, dloss,
                           dtype):
    import cupy

    _require_contiguous(probs2d.dtype, probs2d)
    targets1d = _targets(targets1d)
    rows, vocab = probs2d.shape
    # In place where the gradient has the probabilities' type, else a new 2-byte array.
    dlogits = probs2d if np.dtype(dtype) == probs2d.dtype else cupy.empty(probs2d.shape, dtype)
    if rows:
        kernel = _kernel("cross_entropy", "cross_entropy_backward", dtype)
        scale = _scalar(float(dloss) / normalizer, dtype)
        kernel(
            (rows,),
            (_row_threads(vocab, CROSS_ENTROPY_MAX_THREADS),),
            (dlogits, probs2d, targets1d, np.int32(vocab), np.int64(ignore_index), scale),
        )
    return dlogits


def adamw_update(
    param,
    grad,
    m,
    v,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    grad_scale: float,
    bias_correction1: float,
    bias_correction2: float,
) -> None:
    dtype = param.dtype
    _require_contiguous(dtype, param, m, v)
    (grad,) = _contiguous(dtype, grad)
    if param.size == 0:
        return
    kernel = _kernel("adamw", "adamw_update", dtype)
    scalars = (
        beta1,
        beta2,
        eps,
        grad_scale,
        1.0 - lr * weight_decay,
        lr / bias_correction1,
        math.sqrt(bias_correction2),
    )
    kernel(
        (_elementwise_blocks(param.size),),
        (ELEMENTWISE_THREADS,),
        (param, grad, m, v, np.int64(param.size), *(_scalar(s, dtype) for s in scalars)),
    )
