"""Every rank runs the same job: its settings compared key by key before the first message.

Ranks started with different configs, --set options or run folders (an MPMD
launch `mpirun -n 2 mpipipe train A : -n 2 mpipipe train A --set ...`, or a
job script that differs per node) would exchange messages of different
shapes. Each rank hands its resolved settings, one TOML value per key, to
one meeting (runtime/rendezvous.py); rank 0 compares them and every rank
gets the same verdict, which names the keys that differ and the ranks on
each side.
"""

from __future__ import annotations

from mpipipe.config.schema import Config
from mpipipe.config.show import config_to_dict, toml_value

SHOWN_KEYS = 3  # keys described in full; the rest are counted


def job_settings(config: Config, **others: str) -> dict[str, str]:
    """Every config key as 'section.key' -> its TOML value, and `others` (--out, --resume)."""
    settings = {
        f"{section}.{key}": toml_value(value)
        for section, values in config_to_dict(config).items()
        for key, value in values.items()
    }
    settings.update({f"--{name}": value for name, value in others.items()})
    return settings


def job_verdict(records: list[tuple[str | None, dict[str, str]]]) -> tuple[int, str] | None:
    """Records of (problem, settings) per rank -> (rank that says it, one line), or None.

    A rank that could not read its config hands in the problem and no settings: the
    lowest such rank's problem is the verdict; otherwise the settings must all agree.
    """
    for rank, (problem, _) in enumerate(records):
        if problem is not None:
            return rank, problem
    differ = disagreement([settings for _, settings in records])
    return None if differ is None else (0, differ)


def disagreement(records: list[dict[str, str]]) -> str | None:
    """One line naming the settings the ranks differ in, or None when they all agree."""
    keys = sorted(set().union(*records))
    differing = [key for key in keys if len({record.get(key) for record in records}) > 1]
    if not differing:
        return None
    described = [_describe(key, records) for key in differing[:SHOWN_KEYS]]
    rest = differing[SHOWN_KEYS:]
    more = f"; and {len(rest)} more: {', '.join(rest)}" if rest else ""
    return (
        f"the ranks were started with different settings: {'; '.join(described)}{more}; start "
        "every rank with the same config file, --set options, --out and --resume"
    )


def _describe(key: str, records: list[dict[str, str]]) -> str:
    by_value: dict[str, list[int]] = {}
    for rank, record in enumerate(records):
        by_value.setdefault(record.get(key, "(not set)"), []).append(rank)
    sides = [f"{value} on {_ranks(ranks)}" for value, ranks in by_value.items()]
    return f"{key} is " + " but ".join(sides)


def _ranks(ranks: list[int]) -> str:
    shown = ", ".join(map(str, ranks[:6])) + (", ..." if len(ranks) > 6 else "")
    return f"rank{'s' if len(ranks) > 1 else ''} {shown}"
