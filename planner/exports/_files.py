"""Bytes in and out for the export formats: JSON, ``.npz`` and (optional torch) ``.pt``.

Every writer here returns the file's bytes; :func:`planner.exports.export` writes them with
:func:`planner.io.atomic_write_bytes` only after the whole payload has been built and encoded,
so a run that fails leaves no file behind. Readers turn every failure into one
:class:`~planner.errors.InputError` line naming the file.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from planner.errors import InputError


def suffix_of(path: str | Path, allowed: tuple[str, ...], what: str) -> str:
    """The lower-case suffix of ``path``; an :class:`InputError` when it is not ``allowed``."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in allowed:
        raise InputError(
            f"{p.name}: {what} files end in {' or '.join(allowed)} (got {suffix or 'no suffix'!r})"
        )
    return suffix


def _torch(name: str, action: str, alternative: str) -> Any:
    try:
        import torch
    except ImportError:
        raise InputError(
            f"{name}: {action} .pt files needs torch (pip install 'moe-planner[torch]'); {alternative}"
        ) from None
    return torch


# ---- writing ---------------------------------------------------------------------------------


def json_bytes(obj: Any) -> bytes:
    """Compact, stable JSON (one line per top-level list row would bloat large maps)."""
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def pt_bytes(arrays: dict[str, np.ndarray], name: str, alternative: str) -> bytes:
    """A ``torch.save`` dict of int64 tensors (what ``torch.load(weights_only=True)`` reads)."""
    torch = _torch(name, "writing", alternative)
    buf = io.BytesIO()
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, buf)
    return buf.getvalue()


# ---- reading ---------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path.name}: cannot read as UTF-8 text ({e.__class__.__name__})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path.name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise InputError(f"{path.name}: holds a single .npy array, not an .npz archive of named arrays")
        with z:
            return {k: z[k] for k in z.files}
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise InputError(f"{path.name}: not a readable .npz file ({reason[:100]})") from None


def read_pt(path: Path, alternative: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    torch = _torch(path.name, "reading", alternative)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise InputError(f"{path.name}: not a readable torch file ({e.__class__.__name__})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path.name}: expected a dict of named tensors, got {type(obj).__name__}")
    return {k: (v.cpu().numpy() if hasattr(v, "cpu") else v) for k, v in obj.items()}


def read_arrays(path: Path, alternative: str) -> dict[str, Any]:
    """A ``.npz`` or ``.pt`` file as a dict of arrays (``.pt`` needs torch)."""
    if path.suffix.lower() == ".pt":
        return read_pt(path, alternative)
    return read_npz(path)


def int_array(raw: Any, source: str, key: str, ndim: int) -> np.ndarray:
    """``raw`` as an int64 array of ``ndim`` dimensions; one-line errors otherwise."""
    try:
        arr = np.asarray(raw)
    except ValueError:
        arr = None
    if arr is None or arr.dtype == object:
        raise InputError(f"{source}: {key} must be a rectangular array of integers (rows of unequal length?)")
    if arr.ndim != ndim:
        raise InputError(f"{source}: {key} must have {ndim} dimensions, got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        if arr.size and np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and (arr == np.round(arr)).all():
            return arr.astype(np.int64)
        if arr.size:
            raise InputError(f"{source}: {key} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)
