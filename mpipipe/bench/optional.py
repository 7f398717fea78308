"""Optional packages of the benchmarks, looked for without importing them.

A package that is installed but fails to import raises where it is used, with
its own error, rather than reading as "not installed".
"""

from __future__ import annotations

import importlib.util


def installed(name: str) -> bool:
    """Whether the top-level package `name` is installed (importable by name)."""
    return importlib.util.find_spec(name) is not None
