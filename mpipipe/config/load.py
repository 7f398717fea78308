"""Read a TOML config file and `--set section.key=value` overrides into a Config.

Every key is checked as it is applied: the section and key exist, the value
has the key's type (an int is accepted for a float; bools are not ints;
strings are not numbers), it is one of the key's choices and within its
bounds; op-cost ratios, which parallel.costs takes besides its choices, are
read by OpCosts.parse, which says what is wrong with them. A key that also
takes a file (parallel.schedule's .csv) stores its path made absolute:
relative to the config file's folder when the file gives it, to the current
folder when --set does. A problem raises `UsageError`
with one line naming where it came from (the file or the --set argument),
the key, the value and what would be right.
Cross-key constraints are `mpipipe.config.validate`'s job.
"""

from __future__ import annotations

import math
import os
import re
import typing
from collections.abc import Iterable
from dataclasses import fields

from mpipipe.config.schema import SECTIONS, Config
from mpipipe.config.show import toml_value
from mpipipe.errors import UsageError, did_you_mean
from mpipipe.paths import read_text
from mpipipe.schedules.simulate import OpCosts

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

TYPE_NAMES = {bool: "a boolean (true or false)", int: "an integer", float: "a number",
              str: "a string"}

OVERRIDE_FORM = "use --set section.key=value, e.g. --set parallel.schedule=bitpipe"

_TOML_POSITION = re.compile(r"^(?P<what>.*?) \(at line (?P<line>\d+), column (?P<column>\d+)\)$")


def load_config(path: str | None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the file at `path` (None: no file), then each override in order."""
    config = Config()
    if path is not None:
        folder = os.path.dirname(os.path.abspath(path))
        for section, table in _read_toml(path).items():
            _apply_section(config, section, table, f"config file {path!r}", folder)
    for override in overrides:
        section, key, value = parse_override(override)
        _apply_value(config, section, key, value, f"--set {override}", os.getcwd())
    return config


def load_sections(text: str, sections: Iterable[str], origin: str) -> Config:
    """Defaults, then only `sections` of the TOML `text` (such as a checkpoint's stored config).

    Raises UsageError naming `origin` when the text is not TOML or a value breaks its rule.
    """
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{origin}: {_describe_syntax_error(error)}") from None
    config = Config()
    for section in sections:
        _apply_section(config, section, tables.get(section, {}), origin, os.getcwd())
    return config


def parse_override(override: str) -> tuple[str, str, object]:
    """'section.key=value' -> (section, key, value); value as TOML if it parses, else a string."""
    name, equals, text = override.partition("=")
    section, dot, key = name.strip().partition(".")
    if not equals or not dot or not section or not key or "." in key:
        raise UsageError(f"--set {override!r} is not of the form section.key=value: "
                         f"{OVERRIDE_FORM}")
    text = text.strip()
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        value = text
    return section, key, value


def _read_toml(path: str) -> dict:
    text = read_text(path, "config file", "give the path of a TOML file saved as UTF-8")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"config file {path!r}: {_describe_syntax_error(error)}") from None


def _describe_syntax_error(error: Exception) -> str:
    message = str(error)
    match = _TOML_POSITION.match(message)
    if match is None:
        return f"TOML syntax error: {message}"
    return (f"line {match['line']}, column {match['column']}: TOML syntax error: "
            f"{match['what']}")


def _apply_section(config: Config, section: str, table, origin: str, folder: str) -> None:
    if section not in SECTIONS and not isinstance(table, dict):
        home = _section_of_key(section)
        where = f"put it under [{home}]" if home else f"keys go under [{'], ['.join(SECTIONS)}]"
        raise UsageError(f"{origin}: {section} = {_show(table)} is outside any section; {where}")
    if section not in SECTIONS:
        raise UsageError(f"{origin}: unknown section [{section}]{did_you_mean(section, SECTIONS)}; "
                         f"sections are {', '.join(SECTIONS)}")
    if not isinstance(table, dict):
        raise UsageError(f"{origin}: {section} = {_show(table)} must be a section: write "
                         f"[{section}] on its own line and its keys below it")
    for key, value in table.items():
        _apply_value(config, section, key, value, origin, folder)


def _apply_value(config: Config, section: str, key: str, value, origin: str, folder: str) -> None:
    """Check and set one key; `folder` is where a relative file path given here starts."""
    if section not in SECTIONS:
        raise UsageError(f"{origin}: unknown section {section!r}"
                         f"{did_you_mean(section, SECTIONS)}; sections are {', '.join(SECTIONS)}")
    section_class = SECTIONS[section]
    key_fields = {key_field.name: key_field for key_field in fields(section_class)}
    if key not in key_fields:
        raise UsageError(f"{origin}: {_unknown_key(section, key, key_fields)}")
    expected = typing.get_type_hints(section_class)[key]
    key_field = key_fields[key]
    problem = _check_value(f"{section}.{key}", value, expected, key_field.metadata,
                           key_field.default)
    if problem:
        raise UsageError(f"{origin}: {problem}")
    metadata = key_field.metadata
    if _names_cost_ratios(value, metadata):
        OpCosts.parse(value, name=f"{origin}: {section}.{key}", alternatives=metadata["choices"])
    if _names_a_file(value, metadata):
        value = os.path.normpath(os.path.join(folder, value))
    setattr(getattr(config, section), key, float(value) if expected is float else value)


def _unknown_key(section: str, key: str, key_fields: dict) -> str:
    home = _section_of_key(key)
    if home is not None:
        return f"{section}.{key} is not a key of [{section}]; {key} belongs in [{home}]"
    return (f"unknown key {section}.{key}{did_you_mean(key, key_fields)}; "
            f"keys of [{section}] are {', '.join(key_fields)}")


def _section_of_key(key: str) -> str | None:
    for section, section_class in SECTIONS.items():
        if key in {key_field.name for key_field in fields(section_class)}:
            return section
    return None


def _check_value(name: str, value, expected: type, metadata, default) -> str | None:
    """Why `value` is not acceptable for key `name`, or None when it is."""
    if not _has_type(value, expected):
        hint = ""
        key = name.split(".")[1]
        if isinstance(value, str) and expected in (int, float) and _looks_numeric(value):
            hint = f" (write {key} = {value.strip()} without quotes)"
        elif expected is int and isinstance(value, float) and value.is_integer():
            hint = f" (write {key} = {int(value)})"
        return (f"{name} = {_show(value)} is {_describe_type(value)}, expected "
                f"{TYPE_NAMES[expected]}{hint}")
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} = {_show(value)} is not a finite number; give a finite value"
    choices = metadata.get("choices")
    if (choices and value not in choices and not _names_a_file(value, metadata)
            and not _names_cost_ratios(value, metadata)):
        suffix = metadata.get("file_suffix")
        files = f", nor a file name ending in {suffix}" if suffix else ""
        return (f"{name} = {_show(value)} is not one of {', '.join(choices)}{files}"
                f"{did_you_mean(str(value), choices)}")
    minimum = metadata.get("minimum")
    if minimum is not None and value < minimum:
        return f"{name} = {_show(value)} is below the minimum {minimum} (use {minimum} or more)"
    maximum = metadata.get("maximum")
    if maximum is not None and value > maximum:
        return f"{name} = {_show(value)} is above the maximum {maximum} (use {maximum} or less)"
    above, below = metadata.get("above"), metadata.get("below")
    if above is not None and not value > above:
        return (f"{name} = {_show(value)} must be above {above} (use a value over {above}, "
                f"such as {_show(default)})")
    if below is not None and not value < below:
        return (f"{name} = {_show(value)} must be below {below} (use a value under {below}, "
                f"such as {_show(default)})")
    return None


def _names_a_file(value, metadata) -> bool:
    """The value is a file name the key takes besides its choices (`option(file_suffix=...)`)."""
    suffix = metadata.get("file_suffix")
    return (
        suffix is not None
        and isinstance(value, str)
        and value not in (metadata.get("choices") or ())
        and value.lower().endswith(suffix)
    )


def _names_cost_ratios(value, metadata) -> bool:
    """The value is op-cost ratios the key takes besides its choices (`option(cost_ratios=...)`),
    to be read by OpCosts.parse."""
    return (
        bool(metadata.get("cost_ratios"))
        and isinstance(value, str)
        and value not in (metadata.get("choices") or ())
    )


def _has_type(value, expected: type) -> bool:
    if expected is bool or isinstance(value, bool):
        return type(value) is expected
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _describe_type(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def _show(value) -> str:
    """The value as the user would write it in TOML (best effort for tables and arrays)."""
    try:
        return toml_value(value)
    except TypeError:
        return repr(value)
