"""Atomic file writes: a failing or interrupted run never leaves a partial file behind.

:func:`atomic_write_bytes` writes a temporary file in the destination's folder, flushes it to
disk and renames it over the destination: readers see the old file or the whole new one, never
a part. Any failure (an exception, an interrupt) removes the temporary file. A path that cannot
be written (a folder that cannot be made, no permission, a full disk) is reported as one
:class:`~planner.errors.InputError` line naming the path, not as a traceback.

:func:`check_writable` is called before long work (a solve) so that a bad ``--out`` fails at
once: an existing file without ``force``, or a destination whose folder cannot be made.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from planner.errors import InputError


def _cannot_write(p: Path, e: OSError) -> InputError:
    return InputError(f"{p}: cannot write ({e.strerror or e.__class__.__name__})")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise _cannot_write(p, e) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise _cannot_write(p, e) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(path: str | Path, force: bool) -> None:
    """Refuse to overwrite an existing file unless ``force``, and a path whose folder cannot be
    made: the nearest existing ancestor must be a folder we may write in."""
    p = Path(path)
    try:
        exists = p.exists()
    except OSError as e:  # a name too long, a component that is a file …
        raise _cannot_write(p, e) from None
    if p.is_dir():
        raise InputError(f"{p}: is a folder (expected a file path)")
    if exists and not force:
        raise InputError(f"{p}: already exists (pass `force` to overwrite)", mentions=("force",))
    parent = p.parent
    try:
        while not parent.exists():
            parent = parent.parent
    except OSError as e:
        raise _cannot_write(p, e) from None
    if not parent.is_dir():
        raise InputError(f"{p}: cannot write ({parent} is a file, not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{p}: cannot write (no permission in {parent})")
