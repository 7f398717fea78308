"""Fused ops: a NumPy twin for the CPU and a CUDA kernel for CuPy arrays, behind one call.

Each function dispatches on the type of its array argument, so layers call
`gelu_forward(x)` without knowing where x lives.
"""

from mpipipe.fused.adamw import adamw_update
from mpipipe.fused.cross_entropy import cross_entropy_backward, cross_entropy_forward
from mpipipe.fused.gelu import gelu_backward, gelu_forward
from mpipipe.fused.layernorm import (
    layernorm_backward_input,
    layernorm_backward_weight,
    layernorm_forward,
)
from mpipipe.fused.matmul import matmul

__all__ = [
    "adamw_update",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "gelu_backward",
    "gelu_forward",
    "layernorm_backward_input",
    "layernorm_backward_weight",
    "layernorm_forward",
    "matmul",
]
