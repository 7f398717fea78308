"""The run folder: everything a run will write to, checked before the first step.

    RUN/metrics.jsonl, RUN/trace.json        rank 0
    RUN/flight_rank<R>.txt                   any rank whose watchdog fires
    RUN/<checkpoint.dir>/step_NNNNNNNN.h5    every rank (parallel HDF5) or rank 0

Before the first step rank 0 creates the run folder and the checkpoint
folder, writes a file into each and removes it, and checks that the
checkpoint folder has room for one checkpoint; with parallel HDF5 every
rank then proves it sees that same folder (a file only rank 0 wrote) and
can write there. A folder that already holds a run (metrics of a step, or a
checkpoint) is refused unless the run continues it (--resume) or replaces
it (--overwrite, which removes that run's files, and only those).
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from math import prod

import numpy as np

from mpipipe.checkpoint.folder import (
    PARTIAL_SUFFIX,
    complete_checkpoints,
    remove_partials,
    size_text,
)
from mpipipe.checkpoint.save import DATASET_OVERHEAD_BYTES
from mpipipe.checkpoint.verify_metadata import OPTIMIZER_STATES
from mpipipe.errors import UsageError
from mpipipe.plan import RunPlan

METRICS = "metrics.jsonl"
RUN_FILES = (METRICS, "trace.json")
FLIGHT_PREFIX = "flight_rank"
PROBE_PREFIX = ".mpipipe-probe-"


@dataclass(frozen=True)
class RunFolder:
    path: str
    checkpoint_dir: str


def checkpoint_bytes(plan: RunPlan) -> int:
    """About what one checkpoint of the plan's model takes on disk (data and metadata)."""
    shapes = plan.model.param_shapes()
    elements = sum(prod(shape) for shape in shapes.values())
    arrays = 1 + len(OPTIMIZER_STATES[plan.config.optim.name])
    itemsize = np.dtype(plan.config.runtime.dtype).itemsize
    return elements * arrays * itemsize + arrays * len(shapes) * DATASET_OVERHEAD_BYTES


def check_out_option(out: str | None) -> None:
    """--out, as given: a folder name, not an empty string."""
    if out is not None and not out.strip():
        raise UsageError(f"--out {out!r} is empty: give the run folder, such as --out runs/x")


def check_before_first_step(folder: RunFolder, *, resume: bool, overwrite: bool,
                            checkpoint_bytes: int) -> None:
    """Rank 0: raise one line for anything the run could not write."""
    if resume and overwrite:
        raise UsageError("--resume continues the run in the folder and --overwrite replaces it: "
                         "give one of them")
    prove_writable(folder.path, "--out", "the run folder")
    prove_writable(folder.checkpoint_dir, "checkpoint.dir", "the checkpoint folder")
    held = describe_run(folder)
    if held and not resume and not overwrite:
        raise UsageError(
            f"--out {folder.path} already holds a run ({held}): continue it with --resume latest, "
            "replace it with --overwrite, or choose another --out"
        )
    _check_room(folder.checkpoint_dir, checkpoint_bytes)


def describe_run(folder: RunFolder) -> str | None:
    """What of an earlier run the folder holds, in a few words; None when nothing."""
    found = []
    metrics = os.path.join(folder.path, METRICS)
    if os.path.isfile(metrics) and os.path.getsize(metrics) > 0:
        found.append(METRICS)
    complete = complete_checkpoints(folder.checkpoint_dir)
    if complete:
        found.append(f"{len(complete)} checkpoint(s), the newest of step {complete[-1][0]}")
    if _partials(folder.checkpoint_dir):
        found.append("the partial file of an unfinished save")
    return ", ".join(found) or None


def remove_old_run(folder: RunFolder) -> list[str]:
    """--overwrite: delete what a run writes (metrics, trace, flight records, checkpoints)."""
    removed = remove_partials(folder.checkpoint_dir)
    for _, path in complete_checkpoints(folder.checkpoint_dir):
        os.remove(path)
        removed.append(path)
    for name in sorted(os.listdir(folder.path)):
        if name in RUN_FILES or (name.startswith(FLIGHT_PREFIX) and name.endswith(".txt")):
            os.remove(os.path.join(folder.path, name))
            removed.append(os.path.join(folder.path, name))
    return removed


def leave_token(folder: RunFolder) -> str:
    """Rank 0: a file with a random name in the checkpoint folder; the others look for it."""
    token = PROBE_PREFIX + secrets.token_hex(8)
    with open(os.path.join(folder.checkpoint_dir, token), "w") as handle:
        handle.write(token)
    return token


def check_shared(folder: RunFolder, token: str, rank: int) -> None:
    """Every rank: the checkpoint folder is rank 0's (the token is there) and writable."""
    if not os.path.isfile(os.path.join(folder.checkpoint_dir, token)):
        raise UsageError(
            f"checkpoint.dir {folder.checkpoint_dir!r} on rank {rank} is not the folder rank 0 "
            "created (a file rank 0 wrote there is missing): with parallel HDF5 every rank "
            "writes the checkpoint, so the run folder must be on a file system every node "
            "shares; give such an --out, or set checkpoint.parallel = 'no'"
        )
    prove_writable(folder.checkpoint_dir, "checkpoint.dir",
                    f"the checkpoint folder on rank {rank}", create=False)


def remove_token(folder: RunFolder, token: str) -> None:
    os.remove(os.path.join(folder.checkpoint_dir, token))


def prove_writable(path: str, option: str, what: str, create: bool = True) -> None:
    """Create the folder (when asked), then write, flush and remove a file in it."""
    probe = os.path.join(path, f"{PROBE_PREFIX}{os.getpid()}")
    try:
        if create:
            os.makedirs(path, exist_ok=True)
        with open(probe, "w") as handle:
            handle.write("mpipipe checks that it can write here\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.remove(probe)
    except OSError as error:
        raise UsageError(
            f"{option}: cannot write to {what} {path!r} ({error.strerror}); choose a writable "
            f"folder{' with --out DIR' if option == '--out' else ''}"
        ) from None


def _check_room(checkpoint_dir: str, checkpoint_bytes: int) -> None:
    free = shutil.disk_usage(checkpoint_dir).free
    if free < checkpoint_bytes:
        raise UsageError(
            f"checkpoint.dir {checkpoint_dir!r} has {size_text(free)} free, less than the "
            f"{size_text(checkpoint_bytes)} one checkpoint of this model takes: make room, or "
            "point --out or checkpoint.dir at a larger file system"
        )


def _partials(checkpoint_dir: str) -> list[str]:
    if not os.path.isdir(checkpoint_dir):
        return []
    return [name for name in os.listdir(checkpoint_dir) if name.endswith(PARTIAL_SUFFIX)]
