"""Every public definition of the documented packages says in its docstring what it is for.

A method that overrides a documented method of a base class in the same module (a fusion's pattern / check /
rewrite) inherits its contract and needs none. Every shipped package is in DOCUMENTED."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED = ("graphs", "calibration", "runtime", "serving", "albert_export")


def definitions(tree: ast.Module):
    """(qualified name, node, enclosing class) for every public function, class and method."""
    def visit(node, prefix, owner):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not child.name.startswith("_"):
                yield prefix + child.name, child, owner
                if isinstance(child, ast.ClassDef):
                    yield from visit(child, f"{prefix}{child.name}.", child)
    yield from visit(tree, "", None)


def documented_base_methods(tree: ast.Module) -> dict[str, set[str]]:
    """class name -> the names of its documented methods, for the classes of one module."""
    return {node.name: {item.name for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and ast.get_docstring(item)}
            for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}


def inherits_a_contract(node, owner: ast.ClassDef | None, bases: dict[str, set[str]]) -> bool:
    if owner is None or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    return any(isinstance(base, ast.Name) and node.name in bases.get(base.id, set()) for base in owner.bases)


def undocumented(package: str) -> list[str]:
    missing = []
    modules = {path: ast.parse(path.read_text()) for path in sorted((ROOT / package).rglob("*.py"))}
    bases: dict[str, set[str]] = {}
    for tree in modules.values():
        bases.update(documented_base_methods(tree))
    for path, tree in modules.items():
        for name, node, owner in definitions(tree):
            if ast.get_docstring(node) is None and not inherits_a_contract(node, owner, bases):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return missing


@pytest.mark.parametrize("package", DOCUMENTED)
def test_every_public_definition_has_a_docstring(package):
    assert undocumented(package) == []


def test_the_check_finds_a_definition_without_one(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(
        'class Base:\n    def run(self):\n        """Documented."""\n\n'
        "class Child(Base):\n    \"\"\"A child.\"\"\"\n    def run(self):\n        pass\n\n    def extra(self):\n        pass\n\n"
        "def helper():\n    pass\n\ndef _private():\n    pass\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    assert undocumented("pkg") == ["pkg/mod.py:1 Base", "pkg/mod.py:10 Child.extra", "pkg/mod.py:13 helper"]
