"""A schedule CSV on disk: read it as text, with one-line errors, then `from_csv` it.

`mpipipe schedule --from-csv FILE` and a run's `parallel.schedule = "FILE.csv"`
both read through here, so a file gives the same verdict in both.
"""

from __future__ import annotations

import os

from mpipipe.errors import UsageError
from mpipipe.paths import decode_text, path_problem
from mpipipe.schedules.csv_io import from_csv
from mpipipe.schedules.schedule import Schedule

SCHEDULE_FILE_SUFFIX = ".csv"
# Far above any real schedule (D = 64, N = 1024 ZB-V is about 3 MB), far below trouble.
MAX_SCHEDULE_BYTES = 64 * 2**20


def read_schedule_file(path: str, source: str) -> Schedule:
    """The validated (and dry-run) schedule in the CSV at `path`; `source` names it in errors."""
    return from_csv(read_schedule_text(path, source), source)


def read_schedule_text(path: str, source: str) -> str:
    """The file's text, or a UsageError saying why it is not a readable UTF-8 text file."""
    problem = path_problem(path)  # stat first: a named pipe would block, a device never end
    if problem is not None:
        said = ": no such file" if problem == "does not exist" else f" {problem}"
        raise UsageError(
            f"{source}{said}; give the path of a schedule CSV file (mpipipe schedule KIND "
            "-D D -N N --format csv --out FILE writes one)"
        )
    try:
        size = os.path.getsize(path)
        if size > MAX_SCHEDULE_BYTES:
            raise UsageError(
                f"{source} is {size / 2**20:.0f} MiB, more than a schedule CSV's "
                f"{MAX_SCHEDULE_BYTES // 2**20} MiB: is it the right file?"
            )
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise UsageError(f"{source} cannot be read: {error.strerror}") from None
    return decode_text(data, source)
