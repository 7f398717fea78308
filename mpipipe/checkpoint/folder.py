"""The checkpoint folder of a run: complete files, partial files, publishing and pruning.

    step_00000120.h5            complete: only ever appears by an atomic rename
    step_00000150.h5.partial    being written, or left by a crash mid-save

Only rank 0 calls these (plain file-system work, no MPI).
"""

from __future__ import annotations

import os
import re

PARTIAL_SUFFIX = ".partial"
_COMPLETE = re.compile(r"^step_(\d{8,})\.h5$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.h5"


def partial_path(final_path: str) -> str:
    return final_path + PARTIAL_SUFFIX


def complete_checkpoints(folder: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint in `folder`, oldest first."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        match = _COMPLETE.match(name)
        if match:
            found.append((int(match[1]), os.path.join(folder, name)))
    return sorted(found)


def latest_checkpoint(folder: str) -> str | None:
    complete = complete_checkpoints(folder)
    return complete[-1][1] if complete else None


def remove_partials(folder: str) -> list[str]:
    """Delete what crashed saves left behind; returns the removed paths."""
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(PARTIAL_SUFFIX):
            path = os.path.join(folder, name)
            os.remove(path)
            removed.append(path)
    return removed


def prune(folder: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` complete checkpoints; returns the removed paths."""
    complete = complete_checkpoints(folder)
    removed = [path for _, path in complete[: max(0, len(complete) - keep)]]
    for path in removed:
        os.remove(path)
    return removed


def publish(partial: str, final: str) -> None:
    """Make a fully written file durable, move it into place, and make the move durable."""
    _fsync_path(partial, os.O_RDONLY)
    os.replace(partial, final)
    folder = os.path.dirname(os.path.abspath(final))
    _fsync_path(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync_path(path: str, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def size_text(count: int) -> str:
    """A byte count for a person: '1.4 MB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"
