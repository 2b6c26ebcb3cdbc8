"""Imports point one way (GUIDE section 3): ``augment <- gan <- eval <- cli``, with the
foundation modules (``errors``, ``io``, ``limits``, ``settings``) below all of them. Every
import statement counts, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import synthmed

PACKAGE = Path(synthmed.__file__).parent
FOUNDATION = {"errors", "io", "limits", "settings", "__init__"}
# what each layer may import from synthmed, beside the foundation
ALLOWED = {"foundation": set(), "augment": {"augment"}, "gan": {"augment", "gan"},
           "eval": {"augment", "gan", "eval"}, "cli": {"augment", "gan", "eval", "cli"}}


def layer(module: str) -> str:
    """``synthmed.gan.trainer`` -> ``gan``; ``synthmed.io`` -> ``foundation``."""
    part = module.split(".")[1] if "." in module else "__init__"
    if part in FOUNDATION or part.startswith("__"):  # synthmed.__version__ is the package's
        return "foundation"
    return part  # synthmed.cli.* is the cli layer


def imported_modules(path: Path) -> list[str]:
    """The ``synthmed`` modules ``path`` imports, absolute names."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return [name for name in names if name.split(".")[0] == "synthmed" and "." in name]


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_imports_point_one_way(path):
    module = "synthmed." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    own = layer(module)
    wrong = sorted({name for name in imported_modules(path)
                    if layer(name) != "foundation" and layer(name) not in ALLOWED[own]})
    assert not wrong, f"{module} ({own}) imports {', '.join(wrong)}"


def test_the_rule_sees_a_wrong_import(tmp_path):
    wrong = tmp_path / "generate.py"
    wrong.write_text("def f():\n    from synthmed.eval.privacy import flatten_pixels\n")
    assert [layer(name) for name in imported_modules(wrong)] == ["eval", "eval"]
