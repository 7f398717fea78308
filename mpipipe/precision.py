"""The precision policy of a run: which float type stores what, in one place.

    runtime.precision   compute (activations, working weights, messages)   GEMMs
    fp32                runtime.dtype                                      runtime.dtype
    tf32                float32                                            TF32 tensor cores (GPU)
    fp16                float16, dynamic loss scaling                      float32 accumulation
    bf16                bfloat16 (ml_dtypes)                               float32 accumulation

Master weights, their gradients and the optimizer state stay in
runtime.dtype (float32 when the compute type is low); softmax, LayerNorm
statistics and the loss are computed in `stats_dtype` (float32 for a low
type). Layers need no flag: they compute in the type of the arrays they are
given, and the fused ops pick their float32 statistics from it.

NumPy has no float16 or bfloat16 GEMM, so on the CPU a low-precision run
computes in float32 and rounds to the low type wherever a value is stored
(layer outputs, caches, messages): it emulates the rounding, not the speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")  # runtime.precision's choices
LOW_PRECISIONS = ("fp16", "bf16")
BFLOAT16_PACKAGE = "ml_dtypes"


def bfloat16() -> np.dtype:
    """NumPy's bfloat16 from ml_dtypes; ImportError where that package is missing."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def bfloat16_available() -> bool:
    try:
        bfloat16()
    except ImportError:
        return False
    return True


def is_low(dtype) -> bool:
    """Whether `dtype` is a 2-byte float (float16 or bfloat16)."""
    dtype = np.dtype(dtype)
    return dtype.itemsize == 2 and (dtype.kind == "f" or dtype.name == "bfloat16")


def stats_dtype(dtype) -> np.dtype:
    """The type statistics and reductions of `dtype` values are computed in."""
    return np.dtype(np.float32) if is_low(dtype) else np.dtype(dtype)


@dataclass(frozen=True)
class Precision:
    """runtime.precision with runtime.dtype: the types of a run."""

    name: str
    master: np.dtype  # master weights, gradients, optimizer state
    compute: np.dtype  # activations, working weights, messages between ranks

    @classmethod
    def of(cls, name: str, master_dtype) -> Precision:
        """The policy of `name` (one of PRECISIONS) over master weights of `master_dtype`.

        The config checks the pair (a low type needs float32 master weights, bf16 needs
        ml_dtypes); here a bad pair is a programming error.
        """
        master = np.dtype(master_dtype)
        if name not in PRECISIONS:
            raise ValueError(f"no precision {name!r}; precisions are {', '.join(PRECISIONS)}")
        if name == "fp16":
            return cls(name, master, np.dtype(np.float16))
        if name == "bf16":
            return cls(name, master, bfloat16())
        return cls(name, master, master)

    @property
    def low(self) -> bool:
        """Computes in a 2-byte type, with float32 master weights beside it."""
        return self.compute != self.master

    @property
    def loss_scaling(self) -> bool:
        """float16's narrow range needs the loss scaled up (bfloat16 has float32's range)."""
        return self.name == "fp16"

    @property
    def tf32(self) -> bool:
        """float32 GEMMs may use TF32 tensor cores (on GPUs that have them)."""
        return self.name == "tf32"


FP32 = Precision("fp32", np.dtype(np.float32), np.dtype(np.float32))
