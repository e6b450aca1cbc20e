"""One atomic file writer: readers see the old file or the new one, never half of one.

The content goes to a temporary file in the target's directory (same filesystem, so the rename is
atomic), created mode 0600 by :func:`tempfile.mkstemp` and given its final mode before any byte is
written (a secret is never readable by others, not even briefly), flushed and fsynced, then renamed
over the target with :func:`os.replace` (or linked with :func:`os.link` when it must not replace
an existing file); the directory is fsynced afterwards so the rename survives a crash. On any
failure, including KeyboardInterrupt, the temporary file is removed and the exception propagates.

Why not a library: ``atomicwrites``, the usual one, is archived and unmaintained (its author
deprecated it in 2022); Python has no atomic writer in the standard library.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import BinaryIO


def write_atomic(path: str, data: str | bytes, mode: int = 0o644, *, replace: bool = True,
                 dir_mode: int = 0o755, encoding: str = "utf-8", durable: bool = True) -> None:
    """Write ``data`` (text is encoded with ``encoding``) to ``path`` atomically, with permission
    bits ``mode``; missing parent directories are made with ``dir_mode``.

    With ``replace=False`` an existing ``path`` is kept and :class:`FileExistsError` raised (the
    file is linked into place, so two writers racing both see the first one's file).
    ``durable=False`` skips both fsyncs: readers still see the old or the new file, but after a
    crash the file may be the old one or empty (for a file rewritten all the time that only
    informs, such as the daemon's status file: its fsyncs took 1-7 ms here).
    Raises OSError (FileExistsError as said); no temporary file is left behind on any error.
    """
    payload = data.encode(encoding) if isinstance(data, str) else data
    _commit(path, lambda f: f.write(payload), mode, replace, dir_mode, durable)


def copy_atomic(source: str, path: str, mode: int = 0o755, *, dir_mode: int = 0o755) -> None:
    """Copy the file ``source`` to ``path`` atomically with permission bits ``mode`` (an
    executable being replaced is never seen half-written). Raises OSError; no temporary file is
    left behind on any error."""
    def fill(f: BinaryIO) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, f)
    _commit(path, fill, mode, True, dir_mode)


def _commit(path: str, fill: Callable[[BinaryIO], object], mode: int, replace: bool,
            dir_mode: int, durable: bool = True) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            fill(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    """Make the rename durable; a filesystem that cannot fsync a directory is no error."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
