"""Writing files atomically: a temp file in the target folder, renamed onto the target on
success, so a killed or failed write leaves nothing half-written.

:func:`atomic_path` (and :func:`write_tiff`, :func:`write_text` on it) for whole files;
:class:`StackWriter` for TIFF stacks written one page at a time, with their pixel size
(ImageJ style, so outputs overlay their inputs in Fiji and napari); :class:`RunLock` for
one writer per run directory; :func:`remove_stale_temps` for what killed writes left.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from .pixel_size import PixelSize, imagej_unit


def atomic_path(path: str | Path):
    """Context manager yielding a temp path next to ``path``; renamed onto it on success.

    The temp file is named ``.NAME.HOST~PID~XXXX.tmpSUFFIX``; entering also removes the
    temp files of ``path`` that a killed write of this host left (their process is gone).
    """
    return _Atomic(Path(path))


def _writer_tag() -> str:
    import socket

    return f"{socket.gethostname().replace('~', '-')}~{os.getpid()}~"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove (and return) the temp files of ``path`` left by killed writes on this host."""
    host = _writer_tag().split("~")[0]
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?P<host>[^~]*)~(?P<pid>\d+)~.*\.tmp")
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):
        m = pattern.match(p.name)
        if m and m["host"] == host and not _pid_alive(int(m["pid"])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class _Atomic:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.{_writer_tag()}",
                                   suffix=f".tmp{self.path.suffix}", dir=self.path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
            return
        self.tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            raise named(exc, self.path) from exc  # e.g. a full disk: say which file


def named(error: OSError, path: Path) -> OSError:
    """``error`` (e.g. ENOSPC from a write, which names no file) as an OSError naming
    ``path``: one line, ``PATH: No space left on device``."""
    return OSError(error.errno, error.strerror or os.strerror(error.errno), str(path))


def reserve(path: Path, start: int, size: int, target: Path | None = None) -> None:
    """Allocate the disk blocks of bytes ``start`` .. ``start + size`` of the file ``path``
    now, so that writing them later through a memory map cannot meet a full disk (which
    is a SIGBUS there, not an error): ``posix_fallocate`` where the file system has it,
    else zeros written over the range (a new file's holes). OSError naming ``target``
    (default ``path``) with ENOSPC when the space is not there."""
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            os.posix_fallocate(fd, start, size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            zeros = bytes(1 << 20)
            for at in range(start, start + size, len(zeros)):
                os.pwrite(fd, zeros[: min(len(zeros), start + size - at)], at)
    except OSError as e:
        raise named(e, target or path) from None
    finally:
        os.close(fd)


class RunLock:
    """One writer per run directory: an exclusive ``flock`` on ``DIR/.lock``, taken
    atomically by the kernel and released when the process ends in any way, so the lock of
    a killed run is free again at once. The file keeps the holder's host and pid for the
    message of the refused one. InputError ``"DIR: another run (pid P on H) writes here"``
    when it is held."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InputError(f"{self.path.parent}: another biounet run ({holder}) is writing "
                             "here; wait for it to end or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {_writer_tag().split('~')[0]}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def write_tiff(path: str | Path, data: np.ndarray | Sequence[np.ndarray]) -> Path:
    """Write (H, W) or (N, H, W) ``data`` as a zlib-compressed (multi-page) TIFF, atomically."""
    import tifffile

    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(data), compression="zlib", photometric="minisblack")
    return path


class StackWriter:
    """Write a multi-page TIFF one (H, W) page at a time, atomically (temp file + rename on
    success), so a stack never has to be held in memory and a failed run leaves nothing.

    ``hyperstack`` (images, channels): the stack's shape, known in advance. Such a stack of
    uint8, uint16 or float32 pages that fits a classic TIFF is written as an ImageJ
    hyperstack (axes ZCYX, ``images= channels= slices=`` in its description): Fiji opens it
    with its slices and channels apart. ImageJ reads such files as one contiguous block, so
    they are not compressed; the pages go into a memory map of the file one at a time.
    Other stacks (BigTIFFs past 4 GiB, which ImageJ cannot open; instance labels once a
    page needs uint32, when the pages so far are rewritten) are zlib-compressed pages, page
    i = image i // C, channel i % C.

    ``pixel_size`` (x, y, unit), e.g. from :attr:`Images.pixel_sizes`, is written ImageJ
    style (XResolution/YResolution in pixels per unit, ``unit=`` in an ImageJ description),
    which Fiji, napari and :func:`read_images` read back; None writes no calibration.
    """

    HYPERSTACK_TYPES = (np.uint8, np.uint16, np.float32)

    def __init__(
        self,
        path: str | Path,
        bigtiff: bool = False,
        pixel_size: PixelSize | None = None,
        hyperstack: tuple[int, int] | None = None,
    ):
        self.path = Path(path)
        self.bigtiff = bigtiff  # needed past 4 GiB
        self.pixel_size = pixel_size
        self.hyperstack = None if bigtiff else hyperstack
        self.pages = 0
        self._tif = self._map = None

    def __enter__(self) -> StackWriter:
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        return self

    def write(self, page: np.ndarray) -> None:
        if self.pages == 0 and self.hyperstack and page.dtype in self.HYPERSTACK_TYPES:
            self._map = self._open_hyperstack(page)
        if self._map is not None and page.dtype == np.uint32 and self._map.dtype == np.uint16:
            self._to_pages()  # instance labels past 65535: ImageJ hyperstacks hold no uint32
        if self._map is not None:
            n = self._map.shape[0] * self._map.shape[1]
            fits = page.shape == self._map.shape[2:] and page.dtype == self._map.dtype
            if self.pages >= n or not fits:
                raise ValueError(f"{self.path}: page {self.pages} ({page.dtype}, {page.shape}) "
                                 f"does not fit the declared {self._map.dtype} stack "
                                 f"{self._map.shape}")  # fmt: skip
            self._map[divmod(self.pages, self._map.shape[1])] = page
        else:
            self._write_page(page)
        self.pages += 1

    def _to_pages(self) -> None:
        """Rewrite the pages written so far as compressed pages, and go on that way."""
        old, pages = self._atomic, self._map.reshape(-1, *self._map.shape[2:])[: self.pages]
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._map, self.pages = None, 0
        for page in pages:  # one page in memory at a time
            self._write_page(np.asarray(page))
            self.pages += 1
        del pages
        old.__exit__(ValueError, None, None)  # removes the hyperstack's temp file

    def _open_hyperstack(self, page: np.ndarray) -> np.ndarray:
        import tifffile

        images, channels = self.hyperstack
        metadata = {"axes": "ZCYX"}
        kw = {}
        if self.pixel_size is not None:
            x, y, unit = self.pixel_size
            metadata["unit"] = imagej_unit(unit)
            kw = {"resolution": (1.0 / x, 1.0 / y)}
        mapped = tifffile.memmap(self._tmp, shape=(images, channels, *page.shape),
                                 dtype=page.dtype, imagej=True, metadata=metadata, **kw)
        reserve(self._tmp, mapped.offset, mapped.nbytes, target=self.path)
        return mapped

    def _write_page(self, page: np.ndarray) -> None:
        import tifffile

        if self._tif is None:
            self._tif = tifffile.TiffWriter(self._tmp, bigtiff=self.bigtiff)
        calibration = {}
        if self.pixel_size is not None:
            x, y, unit = self.pixel_size
            calibration = {"resolution": (1.0 / x, 1.0 / y), "resolutionunit": 1}  # NONE
            if self.pages == 0:  # ImageJ reads the unit from the first page's description
                calibration["description"] = f"ImageJ=1.11a\nunit={imagej_unit(unit)}\n"
        self._tif.write(page, compression="zlib", photometric="minisblack", metadata=None,
                        **calibration)  # fmt: skip

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tif is not None:
            self._tif.close()
        if self._map is not None:
            declared = self._map.shape[0] * self._map.shape[1]
            self._map.flush()
            del self._map
            if exc_type is None and self.pages != declared:
                self._atomic.__exit__(ValueError, None, None)  # nothing half-written is kept
                raise ValueError(f"{self.path}: {self.pages} pages written of the declared "
                                 f"{declared}")  # fmt: skip
        self._atomic.__exit__(exc_type, exc, tb)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
