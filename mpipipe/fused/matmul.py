"""Matrix products in the arrays' own float type; 2-byte types accumulate in float32.

float32 and float64 arrays go to NumPy's or CuPy's matmul unchanged (so
float64 runs compute exactly what they always did). float16 and bfloat16
products accumulate in float32: cuBLAS with a float32 compute type on a GPU
(`fused.cublas`), a float32 product on the CPU, where NumPy has no
low-precision GEMM. `dtype` asks for the result in another type, such as
float32 for weight gradients and attention scores, without rounding it to
the low type first.
"""

from __future__ import annotations

import numpy as np

from mpipipe.backend import array_module
from mpipipe.fused import cuda
from mpipipe.precision import is_low


def matmul(left, right, out=None, dtype=None):
    """left @ right (NumPy's matmul rules for 2-D and batched operands), into `out` if given."""
    if not is_low(left.dtype):
        if dtype is not None and np.dtype(dtype) != left.dtype:
            raise TypeError(f"matmul: a {left.dtype} product is not computed in {dtype}")
        if out is None:
            return left @ right
        return array_module(left).matmul(left, right, out=out)
    if left.dtype != right.dtype:
        raise TypeError(f"matmul: operands of {left.dtype} and {right.dtype}; cast one first")
    if cuda.on_gpu(left):
        from mpipipe.fused import cublas

        return cublas.matmul(left, right, out=out, dtype=dtype)
    product = np.matmul(left.astype(np.float32), right.astype(np.float32))
    if out is not None:
        out[...] = product
        return out
    result_dtype = np.dtype(dtype or left.dtype)
    return product if result_dtype == product.dtype else product.astype(result_dtype)
