"""A checkpoint file described for a person, and its checksums checked (no MPI needed)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from mpipipe.checkpoint.folder import size_text
from mpipipe.checkpoint.layout import CHECKSUM_ATTRIBUTE, MODEL_GROUP, OPTIM_GROUP, checksum
from mpipipe.checkpoint.load import datasets_in, open_checkpoint
from mpipipe.checkpoint.schedule_identity import DIGEST_ATTRIBUTE, SOURCE_ATTRIBUTE
from mpipipe.checkpoint.verify_metadata import metadata_problems


@dataclass
class Verification:
    path: str
    checked: int  # datasets whose data matched their checksum
    nbytes: int  # bytes of data checked
    problems: list[str]  # one line per damaged dataset
    metadata: list[str] = field(default_factory=list)  # one line per metadata problem


def describe(path: str) -> str:
    """Step, layout, config, schedule and every dataset with its shape and size."""
    with open_checkpoint(path) as file:
        attrs = _Shown(file.attrs)
        optim = _Shown(file[OPTIM_GROUP].attrs if OPTIM_GROUP in file else {})
        datasets = _datasets(file)
        total = sum(dataset.nbytes for dataset in datasets)
        lines = [
            f"checkpoint {path} ({size_text(os.path.getsize(path))} on disk)",
            f"format {attrs['format']} version {attrs['format_version']}, written by mpipipe "
            f"{attrs.get('mpipipe_version', 'unknown')}",
            f"step {attrs['step']} (next sample {attrs['next_sample']}, "
            f"{attrs['samples_per_step']} samples per step), seed {attrs['seed']}",
            f"model {attrs['model']}, {attrs['parameters']} parameters, {attrs['dtype']}; "
            f"optimizer {optim['name']} at step count {optim['step_count']}",
            f"data {attrs['data']}",
            f"schedule {attrs['schedule']}{_schedule_origin(file.attrs)}",
            f"stage layers {_spans(file.attrs.get('stage_layers'))}",
            "",
            "config:",
            *(f"  {line}" if line else "" for line in str(attrs["config"]).splitlines()),
            "",
            f"datasets ({len(datasets)}, {size_text(total)}):",
        ]
        width = max((len(dataset.name) for dataset in datasets), default=0)
        for dataset in datasets:
            crc = dataset.attrs.get(CHECKSUM_ATTRIBUTE)
            crc_text = "none" if crc is None else f"{int(crc):08x}"
            lines.append(
                f"  {dataset.name:<{width}}  {str(dataset.shape):<14} {dataset.dtype.name:<8} "
                f"{size_text(dataset.nbytes):>9}  crc32 {crc_text}"
            )
    return "\n".join(lines)


def verify(path: str) -> Verification:
    """Check the metadata, then read every dataset and compare it with its stored checksum."""
    problems = []
    checked = nbytes = 0
    with open_checkpoint(path) as file:
        metadata = metadata_problems(file, path)
        for dataset in _datasets(file):
            stored = dataset.attrs.get(CHECKSUM_ATTRIBUTE)
            try:
                actual = checksum(dataset[()])
            except OSError as error:
                problems.append(f"dataset {dataset.name} cannot be read ({error})")
                continue
            if stored is None:
                problems.append(f"dataset {dataset.name} has no {CHECKSUM_ATTRIBUTE} attribute")
            elif int(stored) != actual:
                problems.append(
                    f"dataset {dataset.name} fails its checksum (stored crc32 {int(stored):08x}, "
                    f"data gives {actual:08x})"
                )
            else:
                checked += 1
                nbytes += dataset.nbytes
    return Verification(path, checked, nbytes, problems, metadata)


class _Shown:
    """Attributes for a person: a missing one reads '(missing)' instead of raising."""

    def __init__(self, attrs):
        self.attrs = attrs

    def __getitem__(self, name: str):
        value = self.attrs.get(name)
        return "(missing)" if value is None else value

    def get(self, name: str, default):
        return self.attrs.get(name, default)


def _spans(spans) -> str:
    array = np.asarray(spans if spans is not None else [])
    if array.ndim != 2 or array.shape[1:] != (2,):
        return f"(not a list of spans: {spans!r})"
    return " ".join(f"{start}-{stop - 1}" for start, stop in array.tolist())


def _schedule_origin(attrs) -> str:
    if SOURCE_ATTRIBUTE not in attrs:
        return ""
    return f", from {attrs[SOURCE_ATTRIBUTE]} (ops {attrs.get(DIGEST_ATTRIBUTE, 'unknown')})"


def _datasets(file) -> list[h5py.Dataset]:
    names = []
    for group in (MODEL_GROUP, OPTIM_GROUP):
        if group in file:
            names += sorted(datasets_in(file[group]), key=_natural)
    return [file[name] for name in names]


def _natural(name: str) -> list:
    """Sort /model/10/w after /model/9/w."""
    return [int(part) if part.isdigit() else part for part in name.split("/")]
