"""Read a checkpoint into a run of any layout, checking everything on the way in.

Every rank opens the file read-only on its own (no parallel HDF5 needed,
and no collective call that a failing rank could leave the others waiting
in), checks the format and that every parameter's name and shape match the
model, then reads the datasets of the parameters it holds by global name,
verifying each one's checksum. That is why a checkpoint loads at another
pipeline degree, schedule or data-parallel degree. Problems raise
UsageError with one line naming the file, the dataset and what to do; the
caller agrees on the outcome across ranks (failure.agree_on_setup).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

import h5py
import numpy as np

from mpipipe import __version__
from mpipipe.checkpoint.attributes import data_identity
from mpipipe.checkpoint.folder import latest_checkpoint, remove_partials
from mpipipe.checkpoint.layout import (
    CHECKSUM_ATTRIBUTE,
    FORMAT_NAME,
    FORMAT_VERSION,
    MODEL_GROUP,
    OPTIM_GROUP,
    checksum,
    param_dataset,
    state_dataset,
)
from mpipipe.checkpoint.save import RunState
from mpipipe.checkpoint.schedule_identity import schedule_change
from mpipipe.checkpoint.verify_metadata import metadata_problems, refuse_model_changes
from mpipipe.errors import UsageError
from mpipipe.paths import require_file
from mpipipe.runtime.failure import DEFAULT_TIMEOUT_S
from mpipipe.runtime.phase_watchdog import PhaseWatchdog
from mpipipe.runtime.rendezvous import Rendezvous

_H5PY_REASON = re.compile(r"\(([^()]*)\)\s*$")


@dataclass
class LoadedCheckpoint:
    path: str
    step: int
    data: str  # the data identity the checkpoint was trained with
    same_data: bool  # the run's data settings give the same order
    schedule_change: str  # '' when the run has the checkpoint's ops, else a note


@dataclass
class ResumePoint:
    path: str
    removed_partials: list[str]


def resolve_resume(spec: str, checkpoint_dir: str | None, comm,
                   rendezvous: Rendezvous | None = None) -> ResumePoint:
    """The file `--resume spec` means: 'latest', a folder (its newest) or a file.

    Rank 0 looks (and, for 'latest', removes partial files of crashed saves);
    every rank gets its answer, or raises the same UsageError. The ranks meet
    at `rendezvous` (one made for the occasion when None).
    """
    answer: tuple = (None, [], None)
    if comm.Get_rank() == 0:
        try:
            answer = (*_find(spec, checkpoint_dir), None)
        except UsageError as error:
            answer = (None, [], str(error))
    watchdog = rendezvous.watchdog if rendezvous else PhaseWatchdog(comm.Get_rank(),
                                                                      DEFAULT_TIMEOUT_S)
    with watchdog.phase("resume: finding the checkpoint", spec):
        meeting = rendezvous or Rendezvous(comm, watchdog)
        path, removed, error = meeting.agree(answer, lambda answers: answers[0])
        if rendezvous is None:
            meeting.free()
    if error is not None:
        raise UsageError(error)
    return ResumePoint(path, removed)


def _find(spec: str, checkpoint_dir: str | None) -> tuple[str, list[str]]:
    if spec == "latest":
        if checkpoint_dir is None:
            raise UsageError("--resume latest needs a run folder: give --out DIR")
        removed = remove_partials(checkpoint_dir)
        latest = latest_checkpoint(checkpoint_dir)
        if latest is None:
            partials = f" (removed {len(removed)} partial file(s) of unfinished saves)"
            raise UsageError(
                f"--resume latest: no complete checkpoint in {checkpoint_dir}"
                f"{partials if removed else ''}; start the run anew with --overwrite instead of "
                "--resume"
            )
        return latest, removed
    if os.path.isdir(spec):
        latest = latest_checkpoint(spec)
        if latest is None:
            raise UsageError(
                f"--resume {spec}: the folder holds no complete checkpoint (step_*.h5); give a "
                "checkpoint file, a folder of them, or 'latest'"
            )
        return latest, []
    require_file(spec, "--resume", "give a checkpoint file (step_*.h5), a folder of them, or "
                 "'latest' for this run's newest")
    return spec, []


@contextlib.contextmanager
def open_checkpoint(path: str):
    """The file, read-only, once its format and version are known to be ours."""
    require_file(path, "checkpoint", "give the path of a step_*.h5 file")
    try:
        file = h5py.File(path, "r", locking=False)
    except OSError as error:
        match = _H5PY_REASON.search(str(error))
        reason = match[1] if match else str(error)
        raise UsageError(
            f"checkpoint {path} cannot be read as HDF5 ({reason}): the file is damaged or "
            "incomplete; resume from an earlier checkpoint"
        ) from None
    with file:
        _check_format(file, path)
        yield file


def _check_format(file, path: str) -> None:
    if file.attrs.get("format") != FORMAT_NAME:
        raise UsageError(
            f"checkpoint {path} is not an mpipipe checkpoint (its 'format' attribute is not "
            f"{FORMAT_NAME!r}); give a file written by mpipipe train"
        )
    version = file.attrs.get("format_version")
    if version != FORMAT_VERSION:
        raise UsageError(
            f"checkpoint {path} has format version {version}, this mpipipe ({__version__}) reads "
            f"version {FORMAT_VERSION}: load it with the mpipipe version that wrote it "
            f"({file.attrs.get('mpipipe_version', 'unknown')})"
        )


def datasets_in(group) -> dict[str, tuple[int, ...]]:
    """Absolute dataset path -> shape, for every dataset under `group`."""
    found = {}

    def visit(_name, item):
        if isinstance(item, h5py.Dataset):
            found[item.name] = item.shape

    group.visititems(visit)
    return found


def read_verified(file, path: str, name: str) -> np.ndarray:
    """The dataset's data, after checking it against its stored checksum."""
    dataset = file[name]
    try:
        data = dataset[()]
    except OSError as error:
        raise UsageError(
            f"checkpoint {path}: dataset {name} cannot be read ({error}): the file is damaged; "
            "resume from an earlier checkpoint"
        ) from None
    stored = dataset.attrs.get(CHECKSUM_ATTRIBUTE)
    actual = checksum(data)
    if stored is None or int(stored) != actual:
        stored_text = "none" if stored is None else f"{int(stored):08x}"
        raise UsageError(
            f"checkpoint {path}: dataset {name} fails its checksum (stored crc32 {stored_text}, "
            f"data gives {actual:08x}): the file is damaged; resume from an earlier checkpoint "
            "(mpipipe ckpt verify checks a file)"
        )
    return data


def load_checkpoint(state: RunState, path: str) -> LoadedCheckpoint:
    """Fill this rank's parameters and optimizer state from `path`; returns the step reached.

    On an error the run's arrays may be partly overwritten: start the run again.
    """
    store, optimizer = state.store, state.optimizer
    state_names = type(optimizer).STATE_NAMES
    with open_checkpoint(path) as file:
        problems = metadata_problems(file, path)
        if problems:
            raise UsageError(
                f"checkpoint {path}: {problems[0]}: the file's metadata is damaged; resume from "
                "an earlier checkpoint (mpipipe ckpt verify lists every problem)"
            )
        refuse_model_changes(file, path, state.plan.config.model)
        change = schedule_change(file.attrs, path, state.plan)
        _check_model(file, path, store.layout.shapes)
        _check_optimizer(file, path, state.plan.config.optim.name, state_names,
                         store.layout.shapes)
        _load_buckets(file, path, store, optimizer)
        step = int(file.attrs["step"])
        optim_attributes = file[OPTIM_GROUP].attrs
        step_count = int(optim_attributes["step_count"])
        scaler = state.scaler
        if scaler is not None and scaler.enabled and "loss_scale" in optim_attributes:
            scaler.scale = float(optim_attributes["loss_scale"])
            scaler.good_steps = int(optim_attributes["loss_scale_good_steps"])
        data = str(file.attrs.get("data", ""))
    optimizer.step_count = step_count
    return LoadedCheckpoint(path, step, data, data == data_identity(state.plan.config), change)


def _load_buckets(file, path: str, store, optimizer) -> None:
    """Each bucket's whole flat values from the datasets, then this rank's part of them:
    every parameter, and each optimizer group's span (under ZeRO-1 a part of its shard)."""
    groups_of: dict[int, list] = {}
    for group, state in zip(optimizer.groups, optimizer.state, strict=True):
        groups_of.setdefault(group.key.bucket, []).append((group.key, state))
    for bucket in store.buckets:
        store.set_master(bucket, store.backend.asarray(_whole_flat(file, path, bucket, None)))
        for state_name in type(optimizer).STATE_NAMES:
            flat = _whole_flat(file, path, bucket, state_name)
            for span, state in groups_of.get(bucket.index, []):
                state[state_name][...] = store.backend.asarray(flat[span.start : span.end])


def _whole_flat(file, path: str, bucket, state_name: str | None) -> np.ndarray:
    """The bucket's parameters (state_name None) or one state of them, as one flat array."""
    flat = None
    for key in bucket.keys:
        name = param_dataset(key) if state_name is None else state_dataset(state_name, key)
        data = read_verified(file, path, name)
        if flat is None:
            flat = np.empty(bucket.size, dtype=data.dtype)
        bucket.view(flat, key)[...] = data
    return flat


def _check_model(file, path: str, shapes: dict) -> None:
    stored = datasets_in(file[MODEL_GROUP]) if MODEL_GROUP in file else {}
    needed = {param_dataset(key): tuple(shape) for key, shape in sorted(shapes.items())}
    advice = (
        "resume with the model settings it was written with (mpipipe ckpt inspect shows them) "
        "or start a new run without --resume"
    )
    for name, shape in needed.items():
        if name not in stored:
            raise UsageError(
                f"checkpoint {path} has no dataset {name} of shape {shape} that the model "
                f"needs: it is a checkpoint of another model; {advice}"
            )
        if tuple(stored[name]) != shape:
            raise UsageError(
                f"checkpoint {path}: dataset {name} has shape {tuple(stored[name])} in the file "
                f"but the model needs {shape}; {advice}"
            )
    extra = sorted(set(stored) - set(needed))
    if extra:
        raise UsageError(
            f"checkpoint {path} holds {extra[0]}, which the model does not have "
            f"({len(extra)} such dataset(s)): it is a checkpoint of another model; {advice}"
        )


def _check_optimizer(file, path: str, name: str, state_names, shapes: dict) -> None:
    saved_name = file[OPTIM_GROUP].attrs["name"]  # metadata_problems made sure it is there
    if saved_name != name:
        raise UsageError(
            f"checkpoint {path} holds the state of optimizer {saved_name!r}, the run uses "
            f"optim.name = {name!r}: resume with optim.name = {saved_name!r}"
        )
    for state_name in state_names:
        for key, shape in sorted(shapes.items()):
            dataset = state_dataset(state_name, key)
            if dataset not in file or file[dataset].shape != tuple(shape):
                raise UsageError(
                    f"checkpoint {path}: optimizer state {dataset} is missing or not of shape "
                    f"{tuple(shape)}: the file is damaged; resume from an earlier checkpoint"
                )
