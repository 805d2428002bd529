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
