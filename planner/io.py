"""Atomic file writes: a failing or interrupted run never leaves a partial file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from planner.errors import InputError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(path: str | Path, force: bool) -> None:
    """Refuse to overwrite an existing file unless ``force``."""
    p = Path(path)
    if p.exists() and not force:
        raise InputError(f"{p}: already exists (pass --force to overwrite)")
