"""The package's three deployables stay apart: what runs inside JupyterHub (``hub/``) and
in the service process (``service/``) never imports the operator's tools (``tools/``), and
the hub's code never imports the service's (docs/architecture.md).

Imports are read from the source with ``ast`` (every ``import`` and ``from ... import``,
at any depth, including relative ones), so a lazy import inside a function counts too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hub_resilience"

#: part -> the parts it must not import.
FORBIDDEN = {"hub": ("tools", "service"), "service": ("tools",)}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, as absolute dotted names."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def violations(part: str) -> list[str]:
    found = []
    for path in sorted((PACKAGE / part).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            for other in FORBIDDEN[part]:
                prefix = f"hub_resilience.{other}"
                if module == prefix or module.startswith(prefix + "."):
                    found.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    return found


def test_the_package_has_the_three_parts() -> None:
    for part in ("hub", "service", "tools"):
        assert (PACKAGE / part / "__init__.py").is_file(), part


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_no_part_imports_what_it_must_not(part: str) -> None:
    assert violations(part) == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    source = tmp_path / "hub_resilience" / "hub" / "bad.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "def f():\n    from ..tools import demo\n    import hub_resilience.service.app\n"
    )
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "hub_resilience"
    try:
        assert violations("hub") == [
            "hub_resilience/hub/bad.py imports hub_resilience.service.app",
            "hub_resilience/hub/bad.py imports hub_resilience.tools",
            "hub_resilience/hub/bad.py imports hub_resilience.tools.demo",
        ]
    finally:
        PACKAGE = saved
