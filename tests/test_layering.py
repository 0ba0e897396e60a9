"""The dependency direction of ../shared/DESIGN.md, read from every import statement in the packages."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# devtools/ (training, benchmark, accuracy oracle) is not in the wheel: no shipped package may import it
FORBIDDEN = {
    "albert_export": {"transformers", "devtools"},
    "runtime": {"torch", "onnx", "onnxsim", "transformers", "albert_export", "graphs", "calibration", "devtools"},
    "graphs": {"torch", "transformers", "albert_export", "calibration", "runtime", "devtools"},
    "calibration": {"torch", "transformers", "albert_export", "devtools"},
    "serving": {"torch", "onnx", "onnxsim", "transformers", "albert_export", "graphs", "calibration", "devtools"},
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_follow_the_dependency_direction(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & FORBIDDEN[package]) for path in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_forbidden_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom torch import nn\ndef f():\n    import onnx.helper\n")
    assert imported_modules(module) == {"os", "torch", "onnx"}
