"""The check every bad-input test makes: a UsageError whose message is one line naming the cause."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from mpipipe.errors import UsageError


def one_line_error(action: Callable[[], object], fragments: Iterable[str],
                   error: type[Exception] = UsageError) -> str:
    """Run `action`; it must raise `error` with a one-line message holding every fragment.

    Returns the message, for further checks.
    """
    with pytest.raises(error) as caught:
        action()
    message = str(caught.value)
    assert "\n" not in message, f"message has several lines: {message!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message
