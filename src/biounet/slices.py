"""Which images of a stack or folder: index ranges ("25-29", "0-4,10") and name lists
("@list.txt"), shared by training (validation splits) and inference (``predict --slices``).
"""

from __future__ import annotations

from .errors import InputError
from .io import resolve_data_path


def parse_slices(
    spec: str, n: int, what: str = "slices", names: list[str] | None = None
) -> list[int]:
    """Slice indices from a spec such as ``"25-29"``, ``"28,29"`` or ``"0-4,10"``, or
    ``"@list.txt"``: a text file naming images (file stems, one per line, ``#`` comments),
    looked up in ``names``.

    Ranges are inclusive; ``""`` or ``"none"`` gives no slices. InputError if an index is
    outside 0..n-1, a listed name is not among ``names``, or the spec does not parse.
    """
    spec = spec.strip()
    if spec.lower() in ("", "none"):
        return []
    if spec.startswith("@"):
        return _listed(spec[1:], names, what)
    out: list[int] = []
    for part in spec.split(","):
        try:
            lo, _, hi = part.strip().partition("-")
            a = int(lo)
            b = int(hi) if hi else a
        except ValueError:
            raise InputError(f"{what} {spec!r}: expected indices like 25-29 or 28,29") from None
        if not 0 <= a <= b < n:
            raise InputError(f"{what} {spec!r}: {part.strip()} is outside 0..{n - 1} ({n} images)")
        out.extend(range(a, b + 1))
    return sorted(set(out))


def _listed(path: str, names: list[str] | None, what: str) -> list[int]:
    file = resolve_data_path(path)
    if not file.is_file():
        raise InputError(f"{what} @{path}: no such list file")
    try:
        text = file.read_text()
    except (UnicodeDecodeError, OSError) as e:
        raise InputError(f"{file}: not a readable text list of image names ({e})") from None
    wanted = [ln.split("#")[0].strip() for ln in text.splitlines()]
    wanted = [w for w in wanted if w]
    if names is None:
        raise InputError(f"{what} @{path}: a name list needs named images (a folder)")
    index = {n: i for i, n in enumerate(names)}
    unknown = [w for w in wanted if w not in index]
    if unknown:
        more = f" ({len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""
        raise InputError(f"{file}: {unknown[0]!r} is not among the {len(names)} images{more}")
    return sorted({index[w] for w in wanted})
