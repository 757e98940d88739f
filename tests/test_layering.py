"""The one-way layering of the packages: pipeline/, model/ and track/ never import train/."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["pipeline", "model", "track"])
def test_package_never_imports_train(package):
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "train")
                 for p in sorted((ROOT / package).rglob("*.py"))}
    offenders = {k: v for k, v in offenders.items() if v}
    assert (ROOT / package).is_dir() and not offenders, offenders


def test_the_check_sees_a_train_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom train.config import load_config\n")
    assert "train.config" in imported_modules(bad)
