"""The two checkpoint writers, each a sequence of steps that end at a meeting of every rank.

Parallel HDF5: every rank opens the file with the `mpio` driver and lays
out every attribute and dataset alike (collective); each writer then writes
its own datasets (independent); after a meeting that exchanges the
checksums, the checksum attributes are set, the file flushed and closed
(collective). Without parallel HDF5 the writers send their arrays to rank
0, which writes the file alone.

A rank whose step fails (an OSError or h5py's RuntimeError: a full disk, a
folder gone) does not go on to the next collective call: it hands the error
in at the step's meeting (`SaveSteps.meet`), where every rank learns it,
closes what it holds and raises the same SaveFailed. The collective calls
themselves cannot be polled (h5py holds the GIL inside them); the phase
watchdog's backstop bounds them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from math import prod

import h5py
import numpy as np

from mpipipe.checkpoint.contents import Entry
from mpipipe.checkpoint.layout import CHECKSUM_ATTRIBUTE, OPTIM_GROUP, checksum
from mpipipe.runtime.faults import FaultHooks

# Write a large dataset in slices of at most this many bytes: each slice is progress.
SLICE_BYTES = 64 * 2**20
FILE_ERRORS = (OSError, RuntimeError)  # what HDF5 and the file system raise
ABANDONED: list = []  # files given up after a failure (see _give_up)


@dataclass
class FilePlan:
    """Everything every rank must create alike: attributes and datasets."""

    dtype: np.dtype
    attributes: dict[str, object]
    optim_attributes: dict[str, object]
    entries: list[Entry]


def write_parallel(steps, plan: FilePlan, arrays: dict, faults: FaultHooks) -> None:
    """Every rank writes its datasets into one file with the mpio driver."""
    comm, step, partial = steps.comm, steps.step, steps.partial
    rank = comm.Get_rank()
    file, datasets, error = None, {}, None
    with _closed_on_interrupt(lambda: file):
        faults.at("save-open", step)
        try:
            file = h5py.File(partial, "w", driver="mpio", comm=comm)
            datasets = _lay_out(file, plan)
            faults.fail("save-open", step)
        except FILE_ERRORS as raised:
            error = raised
        steps.meet("opening", error, on_failure=lambda: _give_up(file, datasets))
        checksums, error = {}, None
        faults.at("save-write", step, partial)
        try:
            for entry in plan.entries:
                if entry.writer == rank:
                    data = _host(arrays[entry.path], plan.dtype)
                    _write(datasets[entry.path], data, steps.watchdog)
                    checksums[entry.path] = checksum(data)
            faults.fail("save-write", step)
        except FILE_ERRORS as raised:
            error = raised
        faults.pause_point("save", step)
        faults.at("save-gather", step)
        # Attribute writes are collective: every rank needs every writer's checksum.
        gathered = steps.meet("writing", error, checksums,
                              on_failure=lambda: _give_up(file, datasets))
        for their_checksums in gathered:
            checksums.update(their_checksums)
        error = None
        faults.at("save-close", step)
        try:
            for entry in plan.entries:
                datasets[entry.path].attrs[CHECKSUM_ATTRIBUTE] = np.uint32(checksums[entry.path])
            file.flush()
            file.close()
            faults.fail("save-close", step)
        except FILE_ERRORS as raised:
            error = raised
            _give_up(file, datasets)
        steps.meet("closing", error)


def write_gathered(steps, plan: FilePlan, arrays: dict, faults: FaultHooks) -> None:
    """Rank 0 writes; each dataset's writer sends it there, in file order."""
    comm, step, watchdog = steps.comm, steps.step, steps.watchdog
    rank = comm.Get_rank()
    channel = comm.Dup()
    error = None
    try:
        if rank != 0:
            faults.at("save-write", step)
            sends = [(entry, _host(arrays[entry.path], plan.dtype)) for entry in plan.entries
                     if entry.writer == rank]
            for entry, data in sends:
                request = channel.Isend(data, dest=0)
                watchdog.wait(request.Test, f"waiting for rank 0 to take dataset {entry.path}")
                watchdog.progress()
        else:
            error = _write_alone(channel, steps, plan, arrays, faults)
    finally:
        channel.Free()
    faults.pause_point("save", step)
    faults.at("save-gather", step)
    steps.meet("writing", error)


def _write_alone(channel, steps, plan: FilePlan, arrays: dict, faults: FaultHooks):
    """Rank 0's part: receive every dataset in file order, write them; returns the first error.

    After an error it keeps receiving, so that no sender is left waiting.
    """
    step, watchdog = steps.step, steps.watchdog
    file, datasets, error = None, {}, None
    with _closed_on_interrupt(lambda: file):
        faults.at("save-open", step)
        try:
            file = h5py.File(steps.partial, "w")
            datasets = _lay_out(file, plan)
            faults.fail("save-open", step)
        except FILE_ERRORS as raised:
            error = raised
        faults.at("save-write", step, steps.partial)
        for entry in plan.entries:
            if entry.writer == 0:
                data = _host(arrays[entry.path], plan.dtype)
            else:
                data = np.empty(entry.shape, dtype=plan.dtype)
                request = channel.Irecv(data, source=entry.writer)
                watchdog.wait(request.Test,
                              f"waiting for dataset {entry.path} from rank {entry.writer}")
                watchdog.progress()
            if error is None:
                try:
                    _write(datasets[entry.path], data, watchdog)
                    datasets[entry.path].attrs[CHECKSUM_ATTRIBUTE] = np.uint32(checksum(data))
                except FILE_ERRORS as raised:
                    error = raised
        try:
            if error is None:
                faults.fail("save-write", step)
        except FILE_ERRORS as raised:
            error = raised
        faults.at("save-close", step)
        try:
            if file is not None:
                file.close()
            faults.fail("save-close", step)
        except FILE_ERRORS as raised:
            error = error or raised
            _give_up(file, datasets)
        if error is not None:
            _give_up(file, datasets)
        return error


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


def _write(dataset, data: np.ndarray, watchdog) -> None:
    """Write `data` whole, or in slices along its first axis when it is large."""
    rows = data.shape[0] if data.ndim else 1
    row_bytes = max(1, data.nbytes // max(rows, 1))
    step = max(1, SLICE_BYTES // row_bytes)
    if data.ndim == 0 or rows <= step:
        dataset.write_direct(data)
        watchdog.progress()
        return
    for start in range(0, rows, step):
        selection = np.s_[start : min(start + step, rows)]
        dataset.write_direct(data, source_sel=selection, dest_sel=selection)
        watchdog.progress()


@contextlib.contextmanager
def _closed_on_interrupt(current_file):
    """Ctrl-C while the file is open: close it, and with it every dataset, before going on.

    Left to the garbage collector, the file can be freed before its datasets,
    and HDF5 then prints "can't close file, there are objects still open"
    tracebacks on the way out. `current_file()` gives the file opened so far, or None.
    """
    try:
        yield
    except KeyboardInterrupt:
        file = current_file()
        if file is not None and file.id.valid:
            with contextlib.suppress(*FILE_ERRORS):
                file.close()
        raise


def _give_up(file, datasets: dict) -> None:
    """Leave a file open for good after a failure: HDF5 may crash closing it.

    After a failed write, HDF5 (1.10) can dereference a null pointer when
    the file or one of its datasets is closed, and the garbage collector
    would do that at exit. The objects are kept here instead; a process
    whose save failed ends without finalizing Python (SaveFailed says so).
    """
    if file is not None:
        ABANDONED.append((file, dict(datasets)))
    datasets.clear()


def _host(array, dtype: np.dtype) -> np.ndarray:
    """A C-contiguous host copy (or view) of a NumPy or CuPy array in the file's dtype."""
    if not isinstance(array, np.ndarray):
        array = array.get()
    return np.ascontiguousarray(array, dtype=dtype)


def nbytes(plan: FilePlan) -> int:
    """Bytes of array data in the file."""
    return sum(prod(entry.shape) for entry in plan.entries) * plan.dtype.itemsize
