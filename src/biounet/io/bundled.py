"""The bundled data sets (ISBI 2012, DSB 2018 nuclei): where their folders are."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError


def find_data(name: str = "isbi2012") -> Path:
    """Folder of a bundled data set: ``$BIOUNET_DATA/name``, the repository's ``data/name``
    or ``./data/name``, the first that exists."""
    candidates = []
    if os.environ.get("BIOUNET_DATA"):
        candidates.append(Path(os.environ["BIOUNET_DATA"]) / name)
    candidates.append(Path(__file__).resolve().parents[3] / "data" / name)
    candidates.append(Path.cwd() / "data" / name)
    for c in candidates:
        if c.is_dir():
            return c
    raise InputError(
        f"bundled data set {name!r} not found (looked in {', '.join(map(str, candidates))}); "
        "set BIOUNET_DATA or pass --images/--labels"
    )


def resolve_data_path(path: str | Path) -> Path:
    """``path`` as given if it exists; else a ``data/NAME/...`` path is looked up in the
    bundled data set NAME (see :func:`find_data`), so presets can name bundled files and
    still run from any working directory."""
    path = Path(path)
    if path.exists() or path.is_absolute() or len(path.parts) < 2 or path.parts[0] != "data":
        return path
    try:
        return find_data(path.parts[1]).joinpath(*path.parts[2:])
    except InputError:
        return path
