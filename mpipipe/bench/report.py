"""Where benchmark results go: the machine, the date, the command, Markdown tables and JSON."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys

from mpipipe.bench.optional import installed


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return pages * page_size / 2**30


def library_versions() -> dict[str, str]:
    import numpy

    # Only report MPI where it is already running: initialising it here would start a
    # singleton MPI in a process that launches mpiexec jobs.
    versions = {"python": platform.python_version(), "numpy": numpy.__version__}
    if "mpi4py.MPI" in sys.modules:
        import mpi4py
        from mpi4py import MPI

        versions["mpi4py"] = mpi4py.__version__
        versions["mpi"] = MPI.Get_library_version().split(",")[0].strip("\x00 \n")
    if installed("torch"):
        import torch

        versions["torch"] = torch.__version__
    if installed("ortools"):
        import ortools

        versions["ortools"] = ortools.__version__
    return versions


def machine_info() -> dict:
    memory = memory_gib()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": None if memory is None else round(memory, 1),
        "os": f"{platform.system()} {platform.release()}",
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "versions": library_versions(),
    }


def machine_line(machine: dict) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    memory = f", {machine['memory_gib']:g} GiB" if machine.get("memory_gib") else ""
    load = machine.get("load_average")
    load_text = f"; load average {load:g} (1 min) when the part started" if load is not None else ""
    return (
        f"{machine['cpu']}, {machine['cores']} cores{memory}, {machine['os']}; "
        f"{versions}{load_text}"
    )


def today() -> str:
    return datetime.date.today().isoformat()


def command_line(ranks: int | None = None) -> str:
    """How this process was started, as a person would retype it."""
    launcher = f"mpiexec -n {ranks} " if ranks and ranks > 1 else ""
    started_as_mpipipe = bool(sys.argv) and sys.argv[0].endswith(("mpipipe", "__main__.py"))
    arguments = sys.argv[1:] if started_as_mpipipe else []
    return f"{launcher}python -m mpipipe {' '.join(arguments)}".rstrip()


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def provenance(command: str, machine: dict, date: str) -> str:
    return f"Command: `{command}`  \nMachine: {machine_line(machine)}  \nDate: {date}"


def write_part(out_dir: str, part: str, markdown: str, data: dict) -> tuple[str, str]:
    """Write <part>.md and <part>.json into `out_dir` (made by prepare_out_dir); return their
    paths."""
    markdown_path = os.path.join(out_dir, f"{part}.md")
    json_path = os.path.join(out_dir, f"{part}.json")
    with open(markdown_path, "w") as handle:
        handle.write(markdown.rstrip() + "\n")
    with open(json_path, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")
    return markdown_path, json_path


def percent(value: float) -> str:
    return f"{100 * value:+.1f}%"


def fraction(value: float) -> str:
    return f"{100 * value:.1f}%"
