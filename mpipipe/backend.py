"""The one place that chooses NumPy or CuPy, the float type and the GPU.

`runtime.device` is `auto` (CuPy when it imports and sees a GPU, else
NumPy), `cpu` or `gpu`; `runtime.dtype` is `float32` (default) or
`float64`. On a GPU node the device is chosen from the node-local rank
before MPI starts, so every rank of a node lands on its own GPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from mpipipe.errors import UsageError

# Launchers that export the node-local rank, in the order we trust them.
LOCAL_RANK_VARIABLES = (
    "OMPI_COMM_WORLD_LOCAL_RANK",  # Open MPI mpirun/mpiexec
    "SLURM_LOCALID",  # srun
    "PMI_LOCAL_RANK",  # MPICH Hydra, Cray PALS
    "MPI_LOCALRANKID",  # Intel MPI, MVAPICH
    "PALS_LOCAL_RANKID",  # Cray PALS (PBS on HPE machines)
)

DEVICES = ("auto", "cpu", "gpu")  # runtime.device's choices
DTYPES = {"float32": np.float32, "float64": np.float64}  # runtime.dtype's choices

# How often a host waiting for the GPU lets MPI make progress.
DEVICE_POLL_S = 2e-5


@dataclass
class Backend:
    """The array library, float type and device a run computes with."""

    xp: ModuleType
    dtype: type
    device: str  # "cpu" or "gpu"
    gpu_index: int | None = None

    @property
    def is_gpu(self) -> bool:
        return self.device == "gpu"

    def asarray(self, array) -> object:
        """Move a host array to this backend with the run's float type."""
        return self.xp.asarray(array, dtype=self.dtype)

    def to_host(self, array) -> np.ndarray:
        return array.get() if self.is_gpu else np.asarray(array)

    def device_bytes_in_use(self) -> int:
        """Bytes CuPy's memory pool has handed out and not got back (GPU only)."""
        return int(self.xp.get_default_memory_pool().used_bytes())

    def synchronize(self, while_waiting: Callable[[], object] | None = None) -> None:
        """Wait for queued GPU work (before a buffer is handed to MPI or timed).

        With `while_waiting`, poll the stream and call it meanwhile, so MPI keeps
        moving messages while the device computes; NumPy work is already done.
        """
        if not self.is_gpu:
            return
        stream = self.xp.cuda.get_current_stream()
        if while_waiting is None:
            stream.synchronize()
            return
        done = stream.record()
        while not done.done:
            while_waiting()
            time.sleep(DEVICE_POLL_S)


def array_module(array) -> ModuleType:
    """numpy or cupy, whichever `array` belongs to."""
    module = type(array).__module__
    if module.startswith("cupy"):
        import cupy

        return cupy
    return np


def local_rank_from_environment() -> int | None:
    """The node-local rank exported by the launcher, or None if none did."""
    for name in LOCAL_RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return None


def _import_cupy():
    try:
        import cupy
    except ImportError:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # no driver, no device: CuPy imports but cannot run
        return None
    return cupy


def select_backend(
    device: str = "auto", dtype: str = "float32", local_rank: int | None = None
) -> Backend:
    """Choose the array library and bind this process to its GPU.

    Call before MPI is initialised when possible: the device is chosen from
    `local_rank`, else from the launcher's environment, so CUDA-aware MPI
    sees the right device from its first call. `device` and `dtype` are
    runtime.device's and runtime.dtype's values, which the config schema
    checks against DEVICES and DTYPES.
    """
    if device not in DEVICES or dtype not in DTYPES:
        raise ValueError(f"no backend for device {device!r} and dtype {dtype!r}: devices are "
                         f"{', '.join(DEVICES)}, dtypes {', '.join(DTYPES)}")
    if device == "cpu":
        return Backend(xp=np, dtype=DTYPES[dtype], device="cpu")
    cupy = _import_cupy()
    if cupy is None:
        if device == "gpu":
            raise UsageError(
                "runtime.device: 'gpu' was requested but no CUDA GPU is usable here (CuPy is "
                "missing or sees no device); use runtime.device='cpu' or 'auto', or install "
                "mpipipe[gpu] on a GPU node"
            )
        return Backend(xp=np, dtype=DTYPES[dtype], device="cpu")
    if local_rank is None:
        local_rank = local_rank_from_environment() or 0
    gpu_index = local_rank % cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(gpu_index).use()
    return Backend(xp=cupy, dtype=DTYPES[dtype], device="gpu", gpu_index=gpu_index)


def shared_memory_local_rank(comm) -> int:
    """The node-local rank from an MPI shared-memory split, when no launcher variable is set."""
    from mpi4py import MPI

    node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node_comm.Get_rank()
    finally:
        node_comm.Free()
