"""Write one checkpoint file from every rank, safe against a crash, a stall or a full disk.

The writers (checkpoint/writers.py) write `<name>.partial`: with parallel
HDF5 every rank writes its own datasets into it, without it rank 0 gathers
them. Rank 0 then fsyncs it, renames it into place and fsyncs the folder. A
crash before the rename leaves only a partial file, which the next start
removes; a file with a complete name is always whole.

The save runs in the phase watchdog's "checkpoint save" phase and is a
series of steps, each ending at a meeting of every rank (runtime/rendezvous.py):
holdings exchanged, file opened, datasets written (checksums exchanged),
file closed, file renamed. A rank that stops is named by rank 0 within
runtime.timeout_s; an error on any rank (a full disk) reaches every rank at
the next meeting, the partial file is removed, and every rank raises the
same SaveFailed, which rank 0 prints as one line (exit 1).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from math import prod

import h5py
import numpy as np

from mpipipe.checkpoint.attributes import root_attributes
from mpipipe.checkpoint.contents import (
    Entry,
    assign_writers,
    gather_sharded,
    holders_of,
    master_views,
    optimizer_slices,
    plan_entries,
)
from mpipipe.checkpoint.folder import latest_checkpoint, partial_path, publish, size_text
from mpipipe.checkpoint.layout import file_dtype
from mpipipe.checkpoint.writers import FilePlan, nbytes, write_gathered, write_parallel
from mpipipe.config.schema import AUTO_YES_NO
from mpipipe.errors import UsageError
from mpipipe.optim.loss_scale import LossScaler
from mpipipe.plan import RunPlan
from mpipipe.runtime.failure import CollectiveStop
from mpipipe.runtime.faults import NO_FAULTS, FaultHooks
from mpipipe.runtime.params import ParamStore
from mpipipe.runtime.phase_watchdog import PhaseWatchdog
from mpipipe.runtime.rendezvous import Rendezvous

ERROR_CHARS = 240  # of an error's text in the one line a failed save gives
DATASET_OVERHEAD_BYTES = 1024  # an HDF5 dataset's header and checksum attribute, about
PREPARING = "preparing the folder of"
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
    scaler: LossScaler | None = None  # fp16's loss scale, saved beside the optimizer state
    # ZeRO-1: each sharded bucket's communicator, over which a save gathers the shards
    bucket_comms: dict[int, object] | None = None


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


class SaveFailed(CollectiveStop):
    """A save failed on some rank; every rank knows, and the partial file is gone.

    Past the first step the process may hold HDF5 objects it must never close
    (writers.ABANDONED), which MPI_Finalize would close: `leaves_open_files`
    then tells the caller to end the process with os._exit after reporting.
    """

    def __init__(self, message: str, leaves_open_files: bool):
        super().__init__(message)
        self.leaves_open_files = leaves_open_files


class SaveSteps:
    """The meetings of one save: each rank hands in how its step went."""

    def __init__(self, rendezvous: Rendezvous, partial: str, step: int):
        self.rendezvous = rendezvous
        self.comm = rendezvous.comm
        self.watchdog = rendezvous.watchdog
        self.partial = partial
        self.step = step

    def meet(self, doing: str, error: BaseException | None, payload=None,
             on_failure: Callable[[], None] | None = None) -> list:
        """Every rank's payload; or, when any rank's step failed, SaveFailed on every rank."""
        outcomes = self.rendezvous.agree((_error_text(error), payload))
        failed = [(rank, text) for rank, (text, _) in enumerate(outcomes) if text is not None]
        if not failed:
            return [payload for _, payload in outcomes]
        if on_failure is not None:
            on_failure()
        if self.comm.Get_rank() == 0 and os.path.exists(self.partial):
            os.remove(self.partial)
        rank, text = failed[0]
        others = f" (and on {len(failed) - 1} other rank(s))" if len(failed) > 1 else ""
        raise SaveFailed(
            f"checkpoint save of step {self.step} failed on rank {rank}{others} while {doing} "
            f"{self.partial}: {text}{_free_space(self.partial, error)}; "
            f"{_what_is_left(self.partial)}",
            leaves_open_files=doing != PREPARING,
        )


def save_checkpoint(
    state: RunState, path: str, *, parallel: bool, faults: FaultHooks = NO_FAULTS,
    rendezvous: Rendezvous | None = None,
) -> SavedCheckpoint:
    """Write `path` (collective: every rank of state.comm calls it with the same arguments).

    The ranks meet at `rendezvous` (made for this save when None, with the run's timeout).
    """
    comm = state.comm
    rank = comm.Get_rank()
    started = time.perf_counter()
    partial = partial_path(path)
    watchdog = rendezvous.watchdog if rendezvous else PhaseWatchdog(
        rank, state.plan.config.runtime.timeout_s)
    with watchdog.phase("checkpoint save", partial), _removed_on_interrupt(partial, rank):
        meeting = rendezvous or Rendezvous(comm, watchdog)
        steps = SaveSteps(meeting, partial, state.step)
        error = _prepare_folder(path, _file_bytes(state)) if rank == 0 else None
        held_by_rank = steps.meet(PREPARING, error, state.store.held_keys())
        plan = _file_plan(state, held_by_rank)
        arrays = _local_arrays(state, plan.entries, watchdog)
        write = write_parallel if parallel else write_gathered
        write(steps, plan, arrays, faults)
        error = None
        if rank == 0:
            with watchdog.phase("checkpoint save: rename", path):
                faults.at("rename", state.step)
                try:
                    faults.fail("rename", state.step)
                    publish(partial, path)
                except OSError as raised:
                    error = raised
        steps.meet("renaming", error)
        if rendezvous is None:
            meeting.free()
    return SavedCheckpoint(path, nbytes(plan), time.perf_counter() - started)


def _prepare_folder(path: str, needed: int) -> OSError | None:
    """Rank 0: the folder exists and has room for the whole file, or the error why not.

    Checked before HDF5 is asked to write anything: HDF5 copes badly with a disk
    that fills under it (see writers._give_up).
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as error:
        return error
    if free < needed:
        return OSError(errno.ENOSPC, f"the file needs {size_text(needed)}, the file system "
                       f"holding it has {size_text(free)} free")
    return None


def _file_bytes(state: RunState) -> int:
    """About what the file will take: data, and a little for each dataset's metadata."""
    shapes = state.store.layout.shapes
    arrays = 1 + len(type(state.optimizer).STATE_NAMES)
    itemsize = file_dtype(state.store.backend.dtype).itemsize
    return arrays * sum(prod(shape) * itemsize + DATASET_OVERHEAD_BYTES
                        for shape in shapes.values())


@contextlib.contextmanager
def _removed_on_interrupt(partial: str, rank: int):
    """Ctrl-C in the middle of a save leaves no partial file behind."""
    try:
        yield
    except KeyboardInterrupt:
        if rank == 0:
            with contextlib.suppress(OSError):
                os.remove(partial)
        raise


def _file_plan(state: RunState, held_by_rank: list[list]) -> FilePlan:
    dtype = file_dtype(state.store.backend.dtype)
    shapes = state.store.layout.shapes
    writers = assign_writers(holders_of(held_by_rank), {key: prod(shapes[key]) for key in shapes})
    return FilePlan(
        dtype=dtype,
        attributes=root_attributes(state.plan, state.step, dtype),
        optim_attributes=_optim_attributes(state),
        entries=plan_entries(shapes, writers, type(state.optimizer).STATE_NAMES),
    )


def _optim_attributes(state: RunState) -> dict[str, object]:
    attributes = {
        "name": state.plan.config.optim.name,
        "step_count": np.int64(state.optimizer.step_count),
    }
    if state.scaler is not None and state.scaler.enabled:
        attributes["loss_scale"] = np.float64(state.scaler.scale)
        attributes["loss_scale_good_steps"] = np.int64(state.scaler.good_steps)
    return attributes


def _local_arrays(state: RunState, entries: list[Entry], watchdog) -> dict[str, object]:
    """This rank's array for each entry it writes (ZeRO-1's shards gathered whole first)."""
    rank = state.comm.Get_rank()
    store = state.store
    whole = {}
    if any(bucket.shard is not None for bucket in store.buckets):
        whole = gather_sharded(store, state.optimizer, state.bucket_comms,
                               lambda request, what: watchdog.wait(request.Test,
                                                                   f"waiting for {what}"))
    slices = optimizer_slices(store, state.optimizer, whole)
    params = master_views(store, whole)
    return {
        entry.path: params[entry.key]
        if entry.state is None
        else slices[entry.key][entry.state]
        for entry in entries
        if entry.writer == rank
    }


def _error_text(error: BaseException | None) -> str | None:
    """The error on one line; HDF5's reports span several and repeat the file name."""
    if error is None:
        return None
    if isinstance(error, OSError) and error.strerror:
        text = f"[Errno {error.errno}] {error.strerror}"
    else:
        text = f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


def _free_space(partial: str, error: BaseException | None) -> str:
    """' (the file system holding it has 12 kB free)', when it may be full."""
    if error is not None and "free" in str(error):
        return ""
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(partial))).free
    except OSError:
        return ""
    full = isinstance(error, OSError) and error.errno == errno.ENOSPC
    if not full and free > 64 * 2**20:
        return ""
    return f" (the file system holding it has {size_text(free)} free)"


def _what_is_left(partial: str) -> str:
    newest = latest_checkpoint(os.path.dirname(os.path.abspath(partial)))
    if newest is None:
        return "no checkpoint of this run was complete before it"
    return (f"the checkpoints saved before are intact (newest {newest}): make room or fix the "
            "folder, then continue with --resume latest")
