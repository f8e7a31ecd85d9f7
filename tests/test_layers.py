"""The package's import hygiene, read from the source with ``ast`` (the layering itself is
import-linter's contract in pyproject.toml, checked by ``lint-imports``)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "biounet"


def _private(name: str) -> bool:
    """``_x`` is private; ``__x__`` (``__version__``) is not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(source: str, where: str) -> list[str]:
    """``"WHERE:LINE: from MODULE import _NAME"`` for each private name that ``source`` (a
    module's text) imports from a biounet module: relative, or absolute ``biounet...``, at
    module or function level."""
    found = []
    for node in ast.walk(ast.parse(source, where)):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = "." * node.level + (node.module or "")
        if node.level == 0 and module.split(".")[0] != "biounet":
            continue  # another package's names are its own business
        found += [f"{where}:{node.lineno}: from {module} import {alias.name}"
                  for alias in node.names if _private(alias.name)]  # fmt: skip
    return found


def test_no_module_imports_a_private_name_of_another():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        found += private_imports(path.read_text(), str(path.relative_to(SRC.parent)))
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_the_check_sees_relative_absolute_and_function_level_imports():
    source = ("from .io.formats import _to_gray\n"
              "from biounet.io import read_images, _x\n"
              "from numpy import _pytesttester\n"
              "from .version import __version__\n"
              "def f():\n"
              "    from ..labels import _y\n")  # fmt: skip
    assert private_imports(source, "m.py") == [
        "m.py:1: from .io.formats import _to_gray",
        "m.py:2: from biounet.io import _x",
        "m.py:6: from ..labels import _y",
    ]
