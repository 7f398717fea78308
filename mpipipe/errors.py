"""The one exception type for bad user input.

A `UsageError` is printed as a single line (no traceback) and ends the run
with exit code 2 on every rank. Its message says what was wrong and what
would be right, e.g. "parallel.pipeline: bitpipe needs an even number of
pipeline ranks, got 3 (use 2, 4, 6, ...)".
"""


# Exit codes every rank of a run ends with.
EXIT_ERROR = 1  # an exception on some rank; the job was aborted
EXIT_USAGE = 2  # bad input (config, command line, data, checkpoint)
EXIT_HANG = 3  # the watchdog found no progress for runtime.timeout_s
EXIT_PREEMPTED = 75  # SIGTERM: checkpoint saved; resume with --resume latest (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): no partial checkpoint left


class UsageError(Exception):
    """Bad input from the user: config, command line, data or checkpoint."""

    exit_code = EXIT_USAGE


def did_you_mean(word: str, choices) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' if none is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
