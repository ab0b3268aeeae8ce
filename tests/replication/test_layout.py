"""The package layout shows the protocol: `he` and `se` speak only through `wire`.

Every module under src/ophiura/replication/ is parsed (imports inside functions included):
the host element must not import the storage element or the reverse, and `wire` (what both
sides speak) imports neither. A shared piece belongs in `wire`, not behind a cross import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "src" / "ophiura" / "replication"
PKG = "ophiura.replication"
FORBIDDEN = {"he": {"se"}, "se": {"he"}, "wire": {"he", "se"}}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package(path: Path) -> str:
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imported(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the source, relative ones resolved."""
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from ophiura.replication import se` names a subpackage too
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def _side(module: str) -> str | None:
    """'he', 'se', 'wire' for a module inside one of the subpackages, else None."""
    if not module.startswith(PKG + "."):
        return None
    first = module[len(PKG) + 1 :].split(".")[0]
    return first if first in FORBIDDEN else None


def test_every_replication_module_lives_in_a_side() -> None:
    loose = [p.name for p in ROOT.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules outside wire/, he/, se/: {loose}"
    assert {p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(
        FORBIDDEN
    )


def test_he_and_se_import_only_wire() -> None:
    violations = []
    for path in sorted(ROOT.rglob("*.py")):
        if path == ROOT / "__init__.py":
            assert _imported(path.read_text(), PKG) == [], "replication/__init__.py imports nothing"
            continue
        side = _side(_module_name(path))
        assert side is not None, path
        for line, module in _imported(path.read_text(), _package(path)):
            target = _side(module)
            if target in FORBIDDEN[side]:
                rel = path.relative_to(ROOT)
                violations.append(f"{rel}:{line} ({side}) imports {module} ({target})")
    assert violations == []


def test_the_check_sees_a_cross_import() -> None:
    """The walker must catch every spelling: absolute, inside a function, relative, subpackage."""
    source = (
        "def f():\n    from ophiura.replication.se.store import Volume\n"
        "from ophiura.replication import he\n"
        "from ..wire import frames\n"
        "import ophiura.replication.se.disk\n"
    )
    sides = [_side(module) for _, module in _imported(source, "ophiura.replication.he")]
    assert {"se", "he", "wire"} <= set(sides)
