"""CuPy with a usable CUDA GPU, or None: GPU tests run where there is one and skip elsewhere."""

from __future__ import annotations

import pytest


def usable_cupy():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:  # no CuPy, no driver or no device
        return None
    return None


cupy = usable_cupy()
needs_gpu = pytest.mark.skipif(cupy is None, reason="needs CuPy and a CUDA GPU")
