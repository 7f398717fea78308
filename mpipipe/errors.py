"""The one exception type for bad user input.

A `UsageError` is printed as a single line (no traceback) and ends the run
with exit code 2 on every rank. Its message says what was wrong and what
would be right, e.g. "parallel.pipeline: bitpipe needs an even number of
pipeline ranks, got 3 (use 2, 4, 6, ...)".
"""


class UsageError(Exception):
    """Bad input from the user: config, command line, data or checkpoint."""

    exit_code = 2


def did_you_mean(word: str, choices) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' if none is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
