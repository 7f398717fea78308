"""The resolved configuration as TOML text, each key with its help as a comment.

`format_config` output loads back with `load_config` to the same Config, so
`mpipipe config show run.toml --set ... > resolved.toml` records a run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields

from mpipipe.config.schema import SECTIONS, Config

# Characters a TOML basic string must escape, with their short escapes.
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
                  "\f": "\\f", "\r": "\\r"}


def toml_value(value) -> str:
    """A Python str / bool / int / float written as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(_escape(character) for character in value) + '"'
    raise TypeError(f"no TOML form for {type(value).__name__} value {value!r}")


def _escape(character: str) -> str:
    if character in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[character]
    if ord(character) < 0x20 or ord(character) == 0x7F:
        return f"\\u{ord(character):04X}"
    return character


def config_to_dict(config: Config) -> dict[str, dict[str, object]]:
    """{section: {key: value}} of every key, defaults included."""
    return asdict(config)


def format_config(config: Config) -> str:
    """The whole config as TOML, one `key = value  # help` line per key."""
    blocks = ["# mpipipe configuration: defaults, the config file and --set overrides, resolved"]
    for section, section_class in SECTIONS.items():
        values = getattr(config, section)
        assignments = []
        for key_field in fields(section_class):
            value = getattr(values, key_field.name)
            assignments.append((f"{key_field.name} = {toml_value(value)}", _comment(key_field)))
        width = max(len(assignment) for assignment, _ in assignments)
        lines = [f"[{section}]"]
        lines += [f"{assignment:<{width}}  # {comment}" for assignment, comment in assignments]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _comment(key_field) -> str:
    metadata = key_field.metadata
    comment = metadata["help"]
    choices = list(metadata.get("choices") or ())
    if metadata.get("cost_ratios"):
        choices.append("F,B,W")
    if metadata.get("file_suffix"):
        choices.append(f"FILE{metadata['file_suffix']}")
    if choices:
        comment += f" ({' | '.join(choices)})"
    return comment
