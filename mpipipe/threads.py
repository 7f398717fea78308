"""Give each rank its share of the node's cores for BLAS threads.

Several ranks per node, each with a BLAS pool as large as the node, spin on
each other's cores (4 ranks on 2 cores ran 20x slower). Before NumPy loads,
set the thread count to cores / ranks-on-this-node, unless the user already
chose one.
"""

from __future__ import annotations

import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
LOCAL_SIZE_VARIABLES = (
    "OMPI_COMM_WORLD_LOCAL_SIZE",  # Open MPI
    "MPI_LOCALNRANKS",  # MPICH Hydra, Intel MPI
    "PALS_LOCAL_SIZE",  # Cray PALS
    "SLURM_NTASKS_PER_NODE",  # srun with --ntasks-per-node
)


def ranks_on_this_node() -> int | None:
    for name in LOCAL_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def limit_blas_threads() -> None:
    """Call before NumPy is imported; does nothing when the user set a thread count."""
    if any(name in os.environ for name in THREAD_VARIABLES):
        return
    ranks = ranks_on_this_node()
    if not ranks or ranks <= 1:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = str(max(1, (cores or 1) // ranks))
    for name in THREAD_VARIABLES:
        os.environ[name] = threads
