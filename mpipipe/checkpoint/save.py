"""Write one checkpoint file from every rank, safe against a crash at any moment.

With parallel HDF5 (h5py built with MPI): all ranks open the file with the
`mpio` driver and create every dataset and attribute with identical
arguments (collective); each dataset's data is then written independently
by its one writer (see contents.assign_writers); the writers' checksums are
exchanged with an allgather and set as attributes, again collectively.

Without it: the writers send their arrays to rank 0, which writes the same
file alone.

Either way the file is written as `<name>.partial`, flushed and closed, and
rank 0 then fsyncs it, renames it into place and fsyncs the folder. A crash
before the rename leaves only a partial file, which resuming ignores and
removes; a file with a complete name is always whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from math import prod

import h5py
import numpy as np

from mpipipe.checkpoint.attributes import root_attributes
from mpipipe.checkpoint.contents import (
    Entry,
    assign_writers,
    holders_of,
    optimizer_slices,
    plan_entries,
)
from mpipipe.checkpoint.folder import partial_path, publish
from mpipipe.checkpoint.layout import CHECKSUM_ATTRIBUTE, OPTIM_GROUP, checksum, file_dtype
from mpipipe.config.schema import AUTO_YES_NO
from mpipipe.errors import UsageError
from mpipipe.plan import RunPlan
from mpipipe.runtime.faults import NO_FAULTS, FaultHooks
from mpipipe.runtime.params import ParamStore

FALLBACK_WARNING = (
    "mpipipe: warning: h5py here is built without MPI (no parallel HDF5): checkpoints are "
    "gathered to rank 0, which writes them alone"
)


@dataclass
class RunState:
    """What a checkpoint saves and restores of a run, as one rank holds it."""

    comm: object
    plan: RunPlan
    store: ParamStore
    optimizer: object
    step: int  # optimizer steps done


@dataclass
class FilePlan:
    """Everything every rank must create alike: attributes and datasets."""

    dtype: np.dtype
    attributes: dict[str, object]
    optim_attributes: dict[str, object]
    entries: list[Entry]


@dataclass
class SavedCheckpoint:
    path: str
    nbytes: int  # bytes of array data in the file
    seconds: float  # from the first rank entering to the file being in place


def parallel_hdf5_available() -> bool:
    return bool(h5py.get_config().mpi)


def use_parallel_hdf5(choice: str) -> bool:
    """checkpoint.parallel: auto uses parallel HDF5 where h5py has it; yes insists; no never."""
    assert choice in AUTO_YES_NO, choice  # the config schema's choices
    if choice == "yes" and not parallel_hdf5_available():
        raise UsageError(
            "checkpoint.parallel = 'yes' but h5py here is built without MPI: install h5py "
            "with parallel HDF5, or set checkpoint.parallel = 'auto' to let rank 0 write"
        )
    return choice == "yes" or (choice == "auto" and parallel_hdf5_available())


def save_checkpoint(
    state: RunState, path: str, *, parallel: bool, faults: FaultHooks = NO_FAULTS
) -> SavedCheckpoint:
    """Write `path` (collective: every rank of state.comm calls it with the same arguments)."""
    comm = state.comm
    started = time.perf_counter()
    dtype = file_dtype(state.store.backend.dtype)
    held_by_rank = comm.allgather(sorted(state.store.params))
    shapes = state.store.layout.shapes
    writers = assign_writers(holders_of(held_by_rank), {key: prod(shapes[key]) for key in shapes})
    plan = FilePlan(
        dtype=dtype,
        attributes=root_attributes(state.plan, state.step, dtype),
        optim_attributes={
            "name": state.plan.config.optim.name,
            "step_count": np.int64(state.optimizer.step_count),
        },
        entries=plan_entries(shapes, writers, type(state.optimizer).STATE_NAMES),
    )
    arrays = _local_arrays(state, plan.entries)
    partial = partial_path(path)
    write = _write_parallel if parallel else _write_gathered
    write(comm, partial, plan, arrays, lambda: faults.pause_point("save", state.step))
    comm.Barrier()
    if comm.Get_rank() == 0:
        publish(partial, path)
    comm.Barrier()
    nbytes = sum(prod(entry.shape) for entry in plan.entries) * dtype.itemsize
    return SavedCheckpoint(path, nbytes, time.perf_counter() - started)


def _local_arrays(state: RunState, entries: list[Entry]) -> dict[str, object]:
    """This rank's array for each entry it writes."""
    rank = state.comm.Get_rank()
    slices = optimizer_slices(state.store, state.optimizer)
    return {
        entry.path: state.store.params[entry.key]
        if entry.state is None
        else slices[entry.key][entry.state]
        for entry in entries
        if entry.writer == rank
    }


def _lay_out(file, plan: FilePlan) -> dict[str, object]:
    """Create the attributes and every dataset (the same calls on every rank)."""
    for name, value in plan.attributes.items():
        file.attrs[name] = value
    optim = file.create_group(OPTIM_GROUP)
    for name, value in plan.optim_attributes.items():
        optim.attrs[name] = value
    return {
        entry.path: file.create_dataset(entry.path, shape=entry.shape, dtype=plan.dtype,
                                        fill_time="never")
        for entry in plan.entries
    }


def _write_parallel(comm, partial: str, plan: FilePlan, arrays: dict, pause) -> None:
    rank = comm.Get_rank()
    with h5py.File(partial, "w", driver="mpio", comm=comm) as file:
        datasets = _lay_out(file, plan)
        checksums = {}
        for entry in plan.entries:
            if entry.writer == rank:
                data = _host(arrays[entry.path], plan.dtype)
                datasets[entry.path].write_direct(data)
                checksums[entry.path] = checksum(data)
        pause()
        # Attribute writes are collective: every rank needs every writer's checksum.
        for gathered in comm.allgather(checksums):
            checksums.update(gathered)
        for entry in plan.entries:
            datasets[entry.path].attrs[CHECKSUM_ATTRIBUTE] = np.uint32(checksums[entry.path])
        file.flush()


def _write_gathered(comm, partial: str, plan: FilePlan, arrays: dict, pause) -> None:
    """Rank 0 writes; each dataset's writer sends it there, in file order."""
    rank = comm.Get_rank()
    channel = comm.Dup()
    try:
        if rank != 0:
            for entry in plan.entries:
                if entry.writer == rank:
                    channel.Send(_host(arrays[entry.path], plan.dtype), dest=0)
            pause()
            return
        with h5py.File(partial, "w") as file:
            datasets = _lay_out(file, plan)
            for entry in plan.entries:
                if entry.writer == 0:
                    data = _host(arrays[entry.path], plan.dtype)
                else:
                    data = np.empty(entry.shape, dtype=plan.dtype)
                    channel.Recv(data, source=entry.writer)
                datasets[entry.path].write_direct(data)
                datasets[entry.path].attrs[CHECKSUM_ATTRIBUTE] = np.uint32(checksum(data))
            pause()
    finally:
        channel.Free()


def _host(array, dtype: np.dtype) -> np.ndarray:
    """A C-contiguous host copy (or view) of a NumPy or CuPy array in the file's dtype."""
    if not isinstance(array, np.ndarray):
        array = array.get()
    return np.ascontiguousarray(array, dtype=dtype)
