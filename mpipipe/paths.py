"""Paths the user gives: say exactly what a path is when it is not what the command needs.

An input must be a regular file: a FIFO blocks the reader forever, a
character device such as /dev/zero never ends, and "no such file" is wrong
for a folder, /dev/null or a loop of symbolic links. The type is read with
stat() before anything opens the path. An output must not be a folder, and
its folder must exist (a device such as /dev/stdout is a fine output).
"""

from __future__ import annotations

import codecs
import errno
import os
import stat

from mpipipe.errors import UsageError

_UTF16_MARKS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_NOT_REGULAR = (
    (stat.S_ISDIR, "is a folder"),
    (stat.S_ISFIFO, "is a named pipe (FIFO), not a regular file"),
    (stat.S_ISCHR, "is a character device, not a regular file"),
    (stat.S_ISBLK, "is a block device, not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
)


def path_problem(path: str) -> str | None:
    """Why `path` cannot be read as a regular file, in a few words; None when it can."""
    if not path:
        return "is empty"
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return _stat_problem(path, error)
    for is_kind, problem in _NOT_REGULAR:
        if is_kind(mode):
            return problem
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def require_file(path: str, what: str, advice: str) -> None:
    """Raise one line, "WHAT 'PATH' is a folder; ADVICE", unless `path` is a readable file."""
    problem = path_problem(path)
    if problem is not None:
        raise UsageError(f"{what} {path!r} {problem}; {advice}")


def require_folder(path: str, what: str, advice: str) -> None:
    """Raise one line, "WHAT 'PATH' does not exist; ADVICE", unless `path` is a folder."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        problem = _stat_problem(path, error)
    else:
        kind = next((text for is_kind, text in _NOT_REGULAR if is_kind(mode)), "is a file")
        problem = None if stat.S_ISDIR(mode) else f"{kind.split(',')[0]}, not a folder"
    if problem is not None:
        raise UsageError(f"{what} {path!r} {problem}; {advice}")


def read_text(path: str, what: str, advice: str) -> str:
    """The UTF-8 text of a regular file, or one line saying why it is none."""
    require_file(path, what, advice)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise UsageError(f"{what} {path!r} cannot be read ({error.strerror}); {advice}") from None
    return decode_text(data, f"{what} {path!r}")


def decode_text(data: bytes, source: str) -> str:
    """`data` as UTF-8 text (a byte-order mark first is allowed); `source` names the file."""
    if data.startswith(_UTF16_MARKS):
        raise UsageError(f"{source} is UTF-16 text; save it as UTF-8 (or ASCII)")
    nul = data.find(b"\0")
    if nul >= 0:
        raise UsageError(f"{source} is not UTF-8 text (byte {nul} is NUL: a binary or UTF-16 "
                         "file); save it as UTF-8 (or ASCII)")
    try:
        return data.decode("utf-8-sig")  # spreadsheets put a byte-order mark first
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{source} is not UTF-8 text (byte {error.start}); save it as UTF-8 (or ASCII)"
        ) from None


def require_output_file(path: str, what: str, advice: str) -> None:
    """Raise one line unless `path` can be created or replaced as a file."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        problem = "is a folder"
    elif not os.path.isdir(folder):
        problem = f"cannot be created: its folder {folder!r} does not exist"
    else:
        return
    raise UsageError(f"{what} {path!r} {problem}; {advice}")


def _stat_problem(path: str, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "is a loop of symbolic links"
    if error.errno == errno.ENOENT and os.path.islink(path):
        return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return "does not exist"
    if error.errno == errno.EACCES:
        return "cannot be reached (permission denied)"
    return f"cannot be examined ({error.strerror})"
