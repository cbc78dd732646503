"""No module of the trainer takes part in an import cycle, counting imports inside functions (issue 20 #1).

import-linter's `layers` contracts (pyproject.toml) order the trainer's modules, but they cannot see a
cycle inside one layer, and a cycle held together by an import inside a function runs as well as any
other. grimp (what import-linter builds its graph with) reads every import statement of a module,
at module level, inside functions and under TYPE_CHECKING alike, so a cycle of any of those is found.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
import pytest


def modules_in_cycles(package: str) -> dict[str, list[str]]:
    """{module: the chain of imports that leads from one of its imports back to it}, for every module of
    `package` in a cycle. Built afresh (no cache): a stale graph would hide a new cycle."""
    graph = grimp.build_graph(package, cache_dir=None)
    found = {}
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                found[module] = [module, *chain]
                break
    return found


def test_no_trainer_module_is_in_an_import_cycle() -> None:
    cycles = modules_in_cycles("olmo_trainer")
    assert cycles == {}, "import cycles (module -> ... -> module):\n" + "\n".join(
        " -> ".join(chain) for chain in cycles.values()
    )


def test_a_cycle_through_an_import_inside_a_function_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: a package whose only cycle goes through a function-level import."""
    package = tmp_path / "cyclic_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def late():\n    from cyclic_pkg import high\n\n    return high\n")
    (package / "high.py").write_text("from cyclic_pkg import low\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        cycles = modules_in_cycles("cyclic_pkg")
    finally:
        sys.modules.pop("cyclic_pkg", None)
    assert set(cycles) == {"cyclic_pkg.low", "cyclic_pkg.high"}
