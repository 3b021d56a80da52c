"""What a wheel installs and which way imports go (static checks of the source tree).

* nothing generic at the top level of site-packages: the wheel holds ``cleandift_rt`` only, with
  the repository's ``export/`` inside it as ``cleandift_rt.export``; ``training/`` is not
  installed (it runs from a checkout);
* ``export`` imports itself relatively (so it works under both names) and has no import cycle;
* ``cleandift_rt`` never imports ``training``, and ``export`` only through the CLI's lazy
  ``export_api`` (by its installed or checkout name, never ``import export``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module, level) of every import statement in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def test_wheel_installs_only_cleandift_rt():
    config = _pyproject()
    listed = set(config["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "cleandift_rt").rglob("__init__.py")
    }
    assert listed == on_disk | {"cleandift_rt.export"}  # every package folder is shipped
    assert {name.split(".")[0] for name in listed} == {"cleandift_rt"}
    assert config["package-dir"] == {"cleandift_rt.export": "export"}


def test_export_imports_itself_relatively_and_without_a_cycle():
    graph = {}
    for path in (ROOT / "export").glob("*.py"):
        mods = _imports(path)
        assert not [m for m, lvl in mods if lvl == 0 and m.split(".")[0] == "export"], path.name
        graph[path.stem] = {m.split(".")[0] or "__init__" for m, lvl in mods if lvl == 1}
    graph.pop("__init__")

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    assert [m for m in graph if reaches(m, m, {m})] == []


def test_runtime_never_imports_export_or_training():
    for path in (ROOT / "cleandift_rt").rglob("*.py"):
        tops = {m.split(".")[0] for m, lvl in _imports(path) if lvl == 0}
        assert not tops & {"export", "training"}, path.relative_to(ROOT)
