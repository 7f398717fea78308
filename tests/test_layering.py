"""Layers without back-edges, read from every module's imports (function-level ones included).

Each rule names the modules it governs and what they may not import; a
failure lists every offending `file:line imports module`. The bottom of the
package (errors, tokens, microbatch, recompute_policy, cost_modes) imports
nothing of mpipipe; schedules are pure data (no MPI, arrays or plots); the
runtime knows nothing of the benchmarks; models, data and config do not reach
back into each other.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import mpipipe

PACKAGE = Path(mpipipe.__file__).parent


@dataclass(frozen=True)
class Edge:
    source: str  # the importing module, e.g. "mpipipe.schedules.render"
    target: str  # the imported module, e.g. "mpipipe.plots.style" or "numpy"
    where: str  # "mpipipe/schedules/render.py:9"

    def __str__(self) -> str:
        return f"{self.where} ({self.source}) imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(source: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module of a `from X import ...`, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = source.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative).is_dir()


def imports_of(path: Path) -> list[Edge]:
    source = module_name(path)
    edges = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.relative_to(PACKAGE.parent).as_posix()}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            edges += [Edge(source, alias.name, where) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(source, path.name == "__init__.py", node)
            for alias in node.names:
                # `from mpipipe import bench` imports the module mpipipe.bench.
                submodule = f"{target}.{alias.name}"
                named = submodule if target.startswith("mpipipe") and is_module(submodule) else ""
                edges.append(Edge(source, named or target, where))
    return edges


EDGES = sorted({edge for path in PACKAGE.rglob("*.py") for edge in imports_of(path)}, key=str)


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@dataclass(frozen=True)
class Rule:
    name: str
    sources: tuple[str, ...]  # the modules (and their submodules) the rule governs
    forbidden: tuple[str, ...]  # what they may not import (modules and their submodules)
    exempt: tuple[str, ...] = ()  # modules under `sources` the rule leaves out
    allowed: tuple[str, ...] = ()  # exceptions to `forbidden`

    def governs(self, module: str) -> bool:
        return any(within(module, source) for source in self.sources) and not any(
            within(module, exempt) for exempt in self.exempt
        )

    def breaks(self, edge: Edge) -> bool:
        return (
            self.governs(edge.source)
            and any(within(edge.target, forbidden) for forbidden in self.forbidden)
            and not any(within(edge.target, allowed) for allowed in self.allowed)
        )


BOTTOM = ("mpipipe.errors", "mpipipe.tokens", "mpipipe.microbatch", "mpipipe.recompute_policy",
          "mpipipe.cost_modes", "mpipipe.precision")
MPI_ARRAYS_PLOTS = ("mpi4py", "numpy", "cupy", "cupyx", "h5py", "matplotlib")

RULES = [
    Rule("only the benchmarks (and their command) import the benchmarks", ("mpipipe",),
         ("mpipipe.bench",), exempt=("mpipipe.bench", "mpipipe.commands.bench")),
    Rule("schedules know nothing of MPI, arrays, plots or the runtime", ("mpipipe.schedules",),
         (*MPI_ARRAYS_PLOTS, "mpipipe"),
         allowed=("mpipipe.errors", "mpipipe.paths", "mpipipe.schedules")),
    Rule("the bottom of the package imports nothing of mpipipe", BOTTOM, ("mpipipe",)),
    Rule("the path checks import only the errors", ("mpipipe.paths",), ("mpipipe",),
         allowed=("mpipipe.errors",)),
    Rule("models do not import the data", ("mpipipe.models",), ("mpipipe.data",)),
    Rule("data imports no layers, models or runtime", ("mpipipe.data",),
         ("mpipipe.layers", "mpipipe.models", "mpipipe.engine", "mpipipe.comm",
          "mpipipe.runtime")),
    Rule("config imports no data, models, layers or runtime", ("mpipipe.config",),
         ("mpipipe.data", "mpipipe.models", "mpipipe.layers", "mpipipe.engine",
          "mpipipe.comm", "mpipipe.runtime", "mpipipe.checkpoint", "mpipipe.plots")),
    Rule("the memory planner uses no MPI, arrays, engine, trainer, data or commands",
         ("mpipipe.memory_plan",),
         (*MPI_ARRAYS_PLOTS, "mpipipe.engine", "mpipipe.comm", "mpipipe.trainer", "mpipipe.data",
          "mpipipe.commands", "mpipipe.memory_fit", "mpipipe.runtime.stage")),
    Rule("layers and fused ops import no models, data, config, schedules or runtime",
         ("mpipipe.layers", "mpipipe.fused"),
         ("mpipipe.models", "mpipipe.data", "mpipipe.config", "mpipipe.schedules",
          "mpipipe.engine", "mpipipe.comm", "mpipipe.runtime")),
]


@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
def test_no_back_edges(rule):
    governed = [edge for edge in EDGES if rule.governs(edge.source)]
    print(f"{rule.name}: what the governed modules import")
    for edge in governed:
        print(f"  {edge}")
    assert governed, f"{rule.name}: no module governed, the rule is stale"
    offending = [edge for edge in EDGES if rule.breaks(edge)]
    assert not offending, f"{rule.name}:\n" + "\n".join(f"  {edge}" for edge in offending)


def test_the_scanner_sees_every_kind_of_import():
    targets = {(edge.source, edge.target) for edge in EDGES}
    assert ("mpipipe.plots.schedule", "mpipipe.schedules.simulate") in targets  # from X import
    assert ("mpipipe.commands.bench", "mpipipe.bench.driver") in targets  # inside a function
    assert ("mpipipe.errors", "difflib") in targets  # `import X` inside a function
    assert ("mpipipe.checkpoint.attributes", "mpipipe") in targets  # from mpipipe import name
    rule = RULES[0]
    assert rule.breaks(Edge("mpipipe.runtime.stage", "mpipipe.bench.mpi_tools", "x.py:1"))
    assert not rule.breaks(Edge("mpipipe.bench.soak", "mpipipe.bench.mpi_tools", "x.py:1"))
