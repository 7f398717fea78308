"""Byte-level token streams: every byte of some text is one token (mpipipe.tokens.BYTE_VOCAB_SIZE).

`stdlib_corpus()` needs no download: the .py sources of the running Python's
standard library (~30 MB), the same bytes on every rank of a job that runs
one Python installation. `text_corpus(path)` reads a file, or every file
under a folder. Files are concatenated in the order of their path strings.
"""

from __future__ import annotations

import functools
import os
import sysconfig

import numpy as np

from mpipipe.errors import UsageError
from mpipipe.paths import path_problem, require_file

# Third-party packages live under the stdlib folder; they are not part of it.
_NOT_STDLIB = ("site-packages", "dist-packages")


@functools.cache
def stdlib_corpus() -> np.ndarray:
    """The standard library's .py files, concatenated in path order, as read-only uint8."""
    root = sysconfig.get_path("stdlib")
    paths = [path for path in _files_under(root, skip=_NOT_STDLIB) if path.endswith(".py")]
    chunks = [chunk for chunk in map(_read_or_none, paths) if chunk is not None]
    corpus = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    if corpus.size == 0:
        raise UsageError(f"data.source = 'stdlib': no .py files under {root!r}; use "
                         "data.source = 'text' with data.path pointing at some text")
    return corpus


def text_corpus(path: str) -> np.ndarray:
    """The bytes of the file at `path`, or of every file under the folder `path`, as uint8."""
    if not path:
        raise UsageError("data.path is empty but data.source = 'text' needs a file or folder: "
                         "set data.path = 'corpus.txt'")
    if os.path.isdir(path):
        chunks = [chunk for chunk in map(_read_or_none, _files_under(path)) if chunk is not None]
        if not chunks:
            raise UsageError(f"data.path {path!r} is a folder with no readable files; put text "
                             "files in it or point data.path at a file")
    else:
        require_file(path, "data.path", "data.source = 'text' reads a file or a folder of files")
        chunk = _read_or_none(path)
        if chunk is None:
            raise UsageError(f"data.path {path!r} cannot be read; check its permissions")
        chunks = [chunk]
    corpus = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    if corpus.size == 0:
        raise UsageError(f"data.path {path!r} is empty (0 bytes of text); give a non-empty corpus")
    return corpus


def _files_under(folder: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Every file under `folder`, recursively, sorted by path, but none under `skip` subfolders."""
    paths = []
    for directory, subfolders, names in os.walk(folder):
        if directory == folder:
            subfolders[:] = [name for name in subfolders if name not in skip]
        paths += [os.path.join(directory, name) for name in names]
    # Only regular files: a named pipe or a device among them would block or never end.
    return sorted(path for path in paths if path_problem(path) is None)


def _read_or_none(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return None

