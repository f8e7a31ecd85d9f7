"""TIFF integrity: a file whose pages or page data end before what it declares is refused.

:func:`check_complete` compares what an open TIFF declares (the page chain, ImageJ
``images=``, a tifffile shape, OME planes) with what the file holds (each page's strip or
tile offsets and byte counts against the file size); :func:`ifd_chain_damage` names the
damage of a file tifffile cannot open at all. Both walk the page chain (image file
directories) byte by byte, classic TIFF and BigTIFF, and give one-line reasons such as
``"truncated: 3 of 5 pages readable (file is 7.27 MB, its pages need 12.1 MB)"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError


def _size(nbytes: int, other: int | None = None) -> str:
    """Bytes as people read them ("812 bytes", "3.6 kB", "7.27 MB"); in bytes when
    ``other`` would otherwise read the same."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            text = f"{nbytes / scale:.3g} {unit}"
            if other is not None and other != nbytes and _size(other) == text:
                return f"{nbytes} bytes"
            return text
    return f"{nbytes} bytes"


# bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, ...)
TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
                   13: 4, 16: 8, 17: 8, 18: 8}  # fmt: skip


def _walk_ifds(path: Path) -> tuple[int, int | None, int, tuple[int, int] | None]:
    """Walk the TIFF page chain (image file directories) of ``path`` byte by byte.

    Returns ``(complete, stop, size, cut_tag)``: the number of page directories that lie
    wholly inside the file; None if the chain then ends properly (next offset 0), the
    bytes the file would need to hold the next directory if it ends past the end of the
    file, or -1 if it loops back; the file size in bytes; and ``(tag code, bytes needed)``
    of the first tag whose value lies past the end of the file (None if none does).
    Classic TIFF and BigTIFF; ValueError when the file does not start like a TIFF.
    """
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) < 8 or head[:2] not in (b"II", b"MM"):
            raise ValueError("not a TIFF header")
        order = "<" if head[:2] == b"II" else ">"
        version = struct.unpack(order + "H", head[2:4])[0]
        if version == 42:
            count_fmt, offset_fmt, entry_fmt = "H", "I", "HHI4s"
            offset = struct.unpack(order + "I", head[4:8])[0]
        elif version == 43 and len(head) >= 16:
            count_fmt, offset_fmt, entry_fmt = "Q", "Q", "HHQ8s"
            offset = struct.unpack(order + "Q", head[8:16])[0]
        else:
            raise ValueError(f"TIFF version {version}")
        count_size, offset_size = struct.calcsize(count_fmt), struct.calcsize(offset_fmt)
        entry = struct.calcsize(order + entry_fmt)
        complete, seen, cut_tag = 0, set(), None
        while offset:
            if offset in seen:
                return complete, -1, size, cut_tag
            if offset + count_size > size:
                return complete, offset + count_size, size, cut_tag
            seen.add(offset)
            f.seek(offset)
            (n,) = struct.unpack(order + count_fmt, f.read(count_size))
            end = offset + count_size + n * entry + offset_size  # entries, then next offset
            if end > size:
                return complete, end, size, cut_tag
            entries = f.read(n * entry)
            for code, kind, count, value in struct.iter_unpack(order + entry_fmt, entries):
                nbytes = count * TIFF_TYPE_BYTES.get(kind, 0)
                if cut_tag is None and nbytes > offset_size:  # the value lies elsewhere
                    (at,) = struct.unpack(order + offset_fmt, value)
                    if at + nbytes > size:
                        cut_tag = (code, at + nbytes)
            (offset,) = struct.unpack(order + offset_fmt, f.read(offset_size))
            complete += 1
    return complete, None, size, cut_tag


def _chain_damage(
    complete: int, stop: int, size: int, readable: int | None = None, declared: int = 0
) -> str:
    """The one-line reason for a page chain that stops early (``_walk_ifds``' result)."""
    readable = complete if readable is None else readable
    if stop == -1:
        return f"damaged: its page chain loops back after {complete} pages"
    total = declared if declared > complete else f"at least {complete + 1}"
    return (f"truncated: {readable} of {total} pages readable (file is {_size(size, stop)}, "
            f"its pages need at least {_size(stop, size)})")  # fmt: skip


def _tag_damage(cut_tag: tuple[int, int], size: int) -> str:
    """The one-line reason for a tag value past the end of the file."""
    import tifffile

    code, need = cut_tag
    name = tifffile.TIFF.TAGS.get(code, f"tag {code}")
    return (f"truncated: its {name} metadata ends past the end of the file (file is "
            f"{_size(size, need)}, it needs {_size(need, size)})")  # fmt: skip


def ifd_chain_damage(path: Path) -> str | None:
    """Why ``path``'s page chain is cut short, or None if it is whole (or if the file is
    no TIFF at all): for files tifffile cannot open."""
    try:
        complete, stop, size, cut_tag = _walk_ifds(path)
    except (OSError, ValueError):
        return None
    if stop is not None:
        return _chain_damage(complete, stop, size, readable=0 if complete <= 1 else None)
    return _tag_damage(cut_tag, size) if cut_tag else None


def check_complete(tif, path: Path) -> None:
    """InputError naming ``path`` if the TIFF holds fewer pages, or less page data, than it
    declares: the page chain (a next page past the end of the file), each page's strip or
    tile offsets + byte counts against the file size, ImageJ ``images=``, a tifffile
    ``{"shape": ...}`` description and OME planes (pages its series lack)."""
    complete, stop, size, cut_tag = _walk_ifds(path)
    pages = list(tif.pages)[:complete]
    ends = [_data_end(p) for p in pages]
    readable = sum(e <= size for e in ends)
    need = max(ends, default=0)  # bytes the pages in the chain need
    first = pages[0] if pages else None
    images = int((tif.imagej_metadata or {}).get("images", 0) or 0)
    declared = [complete, images]
    if images > complete and first is not None and first.compression == 1 and first.is_contiguous:
        # ImageJ stores big stacks as one page directory and contiguous raw planes
        start = first.dataoffsets[0]
        need = start + images * first.nbytes
        readable = min(images, max(0, (size - start) // max(1, first.nbytes)))
        declared[0] = images
    if tif.is_shaped and first is not None:
        plane = max(1, int(np.prod(first.shape)))
        declared.append(sum(int(np.prod(m["shape"])) // plane for m in tif.shaped_metadata or ()
                            if isinstance(m, dict) and "shape" in m))  # fmt: skip
    if tif.is_ome:
        declared.append(complete + sum(sum(p is None for p in s.pages) for s in tif.series))
    total = max(declared)
    if stop is not None:
        raise InputError(f"{path}: {_chain_damage(complete, stop, size, readable, total)}")
    if readable >= total and need <= size:
        if cut_tag:
            raise InputError(f"{path}: {_tag_damage(cut_tag, size)}")
        return
    if total > declared[0]:  # pages declared but absent: what they need is unknown
        needs = f"its {total} pages need more than {_size(max(need, size))}"
    else:
        needs = f"its pages need {_size(need, size)}"
    raise InputError(f"{path}: truncated: {readable} of {total} pages readable "
                     f"(file is {_size(size, need)}, {needs})")  # fmt: skip


def _data_end(page) -> int:
    """Byte past a page's last strip or tile: the file length its data need."""
    spans = zip(page.dataoffsets, page.databytecounts, strict=True)
    return max((offset + count for offset, count in spans if count), default=0)
