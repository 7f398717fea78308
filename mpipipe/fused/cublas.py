"""float16 and bfloat16 GEMMs on CuPy arrays through cuBLAS, accumulating in float32.

CuPy's own matmul upcasts batched float16 products to float32 and may not
multiply bfloat16 at all, so low-precision products call
cublasGemmStridedBatchedEx directly: inputs in their 2-byte type, compute
type CUBLAS_COMPUTE_32F (float32 accumulation on tensor cores), the output
in the low type or in float32. `gemm_plan` turns the row-major views into
the calls.
"""

from __future__ import annotations

import numpy as np

from mpipipe.fused.gemm_plan import NeedsCopy, Operand, plan_gemm

# cudaDataType_t values (library_types.h).
CUDA_TYPES = {"float32": 0, "float16": 2, "bfloat16": 14}
COMPUTE_32F = 68  # CUBLAS_COMPUTE_32F
GEMM_DEFAULT_TENSOR_OP = 99  # CUBLAS_GEMM_DEFAULT_TENSOR_OP

_ONE = np.ones(1, dtype=np.float32)
_ZERO = np.zeros(1, dtype=np.float32)


def _operand(array) -> Operand:
    return Operand(tuple(array.shape), tuple(stride // array.itemsize for stride in array.strides))


def _cuda_type(array) -> int:
    return CUDA_TYPES[np.dtype(array.dtype).name]


def matmul(left, right, out=None, dtype=None):
    """left @ right for 2-byte float CuPy arrays; the result in `dtype` (default left's)."""
    import cupy
    from cupy_backends.cuda.libs import cublas

    result_dtype = np.dtype(dtype or left.dtype)
    shape = (*left.shape[:-1], right.shape[-1])
    target = out
    if target is None or target.dtype != result_dtype or (
        target.strides[-1] != target.itemsize and shape[-1] > 1
    ):
        target = cupy.empty(shape, dtype=result_dtype)
    if 0 in shape or left.shape[-1] == 0:
        target.fill(0)
    else:
        try:
            calls = plan_gemm(_operand(left), _operand(right), _operand(target))
        except NeedsCopy:
            left, right = cupy.ascontiguousarray(left), cupy.ascontiguousarray(right)
            calls = plan_gemm(_operand(left), _operand(right), _operand(target))
        handle = cupy.cuda.device.get_cublas_handle()
        compute = getattr(cublas, "CUBLAS_COMPUTE_32F", COMPUTE_32F)
        algorithm = getattr(cublas, "CUBLAS_GEMM_DEFAULT_TENSOR_OP", GEMM_DEFAULT_TENSOR_OP)
        for call in calls:
            cublas.gemmStridedBatchedEx(
                handle, call.transa, call.transb, call.m, call.n, call.k, _ONE.ctypes.data,
                right.data.ptr + call.a_offset * right.itemsize, _cuda_type(right), call.lda,
                call.stride_a,
                left.data.ptr + call.b_offset * left.itemsize, _cuda_type(left), call.ldb,
                call.stride_b,
                _ZERO.ctypes.data,
                target.data.ptr + call.c_offset * target.itemsize, _cuda_type(target), call.ldc,
                call.stride_c, call.batch, compute, algorithm,
            )
    if out is not None and target is not out:
        out[...] = target
        return out
    return target


def set_tf32(enabled: bool) -> None:
    """Let CuPy's float32 GEMMs use TF32 tensor cores (compute capability 8.0 and later)."""
    from cupy._core import _routines_linalg as linalg

    default = getattr(linalg, "COMPUTE_TYPE_DEFAULT", 1)
    tf32 = getattr(linalg, "COMPUTE_TYPE_TF32", 7)
    linalg.set_compute_type(np.float32, tf32 if enabled else default)
