"""Row-major (batched) matrix products as cuBLAS's column-major strided-batched GEMM calls.

cuBLAS reads matrices column-major; a row-major (r, c) matrix with row
stride ld is the column-major (c, r) matrix with leading dimension ld. So
C = L @ R, row-major, is C^T = R^T L^T column-major: one GEMM with cuBLAS's
A = R, B = L, m = n_cols(C), n = n_rows(C). An operand stored transposed
(a `.T` view: column stride ld, row stride 1) is passed with op T instead
of being copied. Leading (batch) axes become one strided batch where their
strides allow it; otherwise the plan loops over the outermost axis.

Everything here is in elements and works on (shape, strides) alone, so the
plan is tested on the CPU against NumPy (tests/test_precision.py).
"""

from __future__ import annotations

from dataclasses import dataclass

OP_N, OP_T = 0, 1  # cuBLAS's CUBLAS_OP_N, CUBLAS_OP_T


@dataclass(frozen=True)
class Operand:
    """An array's shape and strides, in elements."""

    shape: tuple[int, ...]
    strides: tuple[int, ...]

    def sub(self, index: int) -> tuple[Operand, int]:
        """The operand with its first axis fixed at `index`, and the element offset of that."""
        return Operand(self.shape[1:], self.strides[1:]), index * self.strides[0]


@dataclass(frozen=True)
class GemmCall:
    """One cublasGemmStridedBatchedEx call, offsets in elements of each operand."""

    transa: int
    transb: int
    m: int
    n: int
    k: int
    a_offset: int  # into the right operand
    lda: int
    stride_a: int
    b_offset: int  # into the left operand
    ldb: int
    stride_b: int
    c_offset: int  # into the output
    ldc: int
    stride_c: int
    batch: int


class NeedsCopy(Exception):
    """An operand's matrices are neither row- nor column-contiguous: copy it first."""


def _matrix_layout(rows: int, cols: int, row_stride: int, col_stride: int) -> tuple[int, int]:
    """(op, ld) of a row-major (rows, cols) matrix as cuBLAS's operand for its transpose."""
    if col_stride == 1 or cols == 1:
        return OP_N, max(row_stride if rows > 1 else cols, cols, 1)
    if row_stride == 1 or rows == 1:
        return OP_T, max(col_stride if cols > 1 else rows, rows, 1)
    raise NeedsCopy


def _batch(operand: Operand) -> tuple[int, int] | None:
    """(count, stride) when the leading axes form one strided batch, else None."""
    lead = [(size, stride) for size, stride in
            zip(operand.shape[:-2], operand.strides[:-2], strict=True) if size != 1]
    if not lead:
        return 1, 0
    for (_, outer), (size, inner) in zip(lead, lead[1:], strict=False):
        if outer != inner * size:
            return None
    count = 1
    for size, _ in lead:
        count *= size
    return count, lead[-1][1]


def plan_gemm(left: Operand, right: Operand, out: Operand) -> list[GemmCall]:
    """The calls computing out = left @ right; left (..., m, k), right (..., k, n) or 2-D.

    `out` must be row-contiguous per matrix (column stride 1); leading axes of left and
    out must match, and right's too unless it is 2-D (one matrix for every batch entry).
    """
    rows, inner = left.shape[-2:]
    cols = right.shape[-1]
    if right.shape[-2] != inner or out.shape[-2:] != (rows, cols):
        raise ValueError(f"cannot multiply {left.shape} by {right.shape} into {out.shape}")
    if len(right.shape) > 2 and right.shape[:-2] != left.shape[:-2]:
        raise ValueError(f"batch axes differ: {left.shape} @ {right.shape}")
    if out.shape[:-2] != left.shape[:-2] or (out.strides[-1] != 1 and cols > 1):
        raise ValueError(f"output {out.shape} with strides {out.strides} does not fit")
    return _plan(left, right, out, 0, 0, 0)


def _plan(left: Operand, right: Operand, out: Operand, left_at: int, right_at: int,
          out_at: int) -> list[GemmCall]:
    batches = [_batch(left), _batch(right) if len(right.shape) > 2 else (1, 0), _batch(out)]
    counts = {batch[0] for batch in batches if batch is not None and batch[0] != 1}
    if None not in batches and len(counts) <= 1:
        count = counts.pop() if counts else 1
        return [_call(left, right, out, left_at, right_at, out_at, count,
                      [batch[1] if batch[0] == count else 0 for batch in batches])]
    calls = []
    for index in range(left.shape[0]):
        sub_left, left_offset = left.sub(index)
        sub_out, out_offset = out.sub(index)
        if len(right.shape) > 2:
            sub_right, right_offset = right.sub(index)
        else:
            sub_right, right_offset = right, 0
        calls += _plan(sub_left, sub_right, sub_out, left_at + left_offset,
                       right_at + right_offset, out_at + out_offset)
    return calls


def _call(left: Operand, right: Operand, out: Operand, left_at: int, right_at: int,
          out_at: int, batch: int, strides: list[int]) -> GemmCall:
    rows, inner = left.shape[-2:]
    cols = right.shape[-1]
    transa, lda = _matrix_layout(inner, cols, *right.strides[-2:])
    transb, ldb = _matrix_layout(rows, inner, *left.strides[-2:])
    ldc = max(out.strides[-2] if rows > 1 else cols, cols, 1)
    return GemmCall(
        transa=transa, transb=transb, m=cols, n=rows, k=inner,
        a_offset=right_at, lda=lda, stride_a=strides[1],
        b_offset=left_at, ldb=ldb, stride_b=strides[0],
        c_offset=out_at, ldc=ldc, stride_c=strides[2], batch=batch,
    )
