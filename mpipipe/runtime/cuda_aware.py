"""Decide whether device (GPU) buffers may be handed to MPI directly.

`runtime.cuda_aware = yes | no | auto`. `auto` says yes only when the MPI
library says it can take CUDA buffers:

- Open MPI: the `MPIX_Query_cuda_support()` extension of the loaded libmpi
  (true when Open MPI was built with CUDA and its runtime supports it);
  failing that, `ompi_info` reporting `mpi_built_with_cuda_support:value:true`.
- Cray MPICH: `MPICH_GPU_SUPPORT_ENABLED=1` in the environment.
- MVAPICH2-GDR: `MV2_USE_CUDA=1`.
- Intel MPI: `I_MPI_OFFLOAD=1`.

Otherwise transfers are staged through pinned host buffers, which is always
correct, only slower.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

ENVIRONMENT_SWITCHES = {
    "MPICH_GPU_SUPPORT_ENABLED": "1",  # Cray MPICH
    "MV2_USE_CUDA": "1",  # MVAPICH2-GDR
    "I_MPI_OFFLOAD": "1",  # Intel MPI
}


def _open_mpi_query() -> bool | None:
    for library in (None, "libmpi.so.40", "libmpi.so"):
        try:
            handle = ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
            query = handle.MPIX_Query_cuda_support
        except (OSError, AttributeError):
            continue
        query.restype = ctypes.c_int
        return bool(query())
    return None


def _ompi_info_says_cuda() -> bool | None:
    if shutil.which("ompi_info") is None:
        return None
    try:
        result = subprocess.run(
            ["ompi_info", "--parsable", "--all"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return "mpi_built_with_cuda_support:value:true" in result.stdout


def mpi_is_cuda_aware(library_version: str) -> bool:
    """Best knowledge of whether the running MPI accepts CUDA device buffers."""
    for name, enabled in ENVIRONMENT_SWITCHES.items():
        if os.environ.get(name) == enabled:
            return True
    if "Open MPI" in library_version:
        answer = _open_mpi_query()
        if answer is None:
            answer = _ompi_info_says_cuda()
        return bool(answer)
    return False


def resolve_cuda_aware(setting: str, on_gpu: bool, library_version: str) -> bool:
    """The runtime.cuda_aware setting turned into a yes or no for this run."""
    if not on_gpu:
        return False
    if setting == "yes":
        return True
    if setting == "no":
        return False
    return mpi_is_cuda_aware(library_version)
