"""The architecture rule: stages import core/, never each other; core imports no stage."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("train", "export", "serve")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", STAGES + ("core",))
def test_no_stage_imports_another_stage(package):
    forbidden = set(STAGES) - {package}
    offenders = {
        str(p.relative_to(REPO)): sorted(_imports(p) & forbidden)
        for p in (REPO / package).rglob("*.py")
        if _imports(p) & forbidden
    }
    assert not offenders, f"cross-stage imports: {offenders}"


def _module_level_imports(path: Path) -> set[str]:
    """Full dotted names imported when the module is imported: `if __name__ == "__main__":` blocks are a
    script entry, not a dependency, and are left out."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def test_core_has_no_import_cycle():
    modules = {f"core.{p.stem}": p for p in (REPO / "core").glob("*.py") if p.stem != "__init__"}
    deps = {m: _module_level_imports(p) & set(modules) - {m} for m, p in modules.items()}
    cycles = [(a, b) for a in deps for b in deps[a] if a in deps[b]]
    assert not cycles, f"modules that import each other: {cycles}"


def test_core_metrics_needs_numpy_only():
    """The numbers of a report compute without torch or matplotlib (serve and tools read them too)."""
    third_party = {n.split(".")[0] for n in _module_level_imports(REPO / "core" / "metrics.py")}
    assert third_party <= {"__future__", "collections", "typing", "numpy", "math"}, third_party
