"""The ``.npz`` archive of a trace, member by member: checked ``.npy`` headers and key layouts.

Shared by the whole-file loader (:mod:`planner.traces.npz`) and the streaming reader
(:mod:`planner.traces.stream`): both check a member's header against its size before anything
is allocated, and both accept the same two key layouts (docs/contracts.md "Routing trace
(.npz)"). A file that is not such an archive is one :class:`~planner.errors.InputError` line.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from planner.errors import InputError
from planner.specs.base import one_line, show

TOKEN_KEYS = ("topk_ids", "topk_weights", "step", "source_rank", "seq_id", "pos", "num_experts", "model")
COUNTS_KEYS = ("counts", "num_experts", "model")


_NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _unreadable(name: str, reason: str) -> InputError:
    return InputError(f"{name}: not a readable .npz file ({one_line(reason, 120)})")


def member_header(
    z: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, name: str
) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, header length) of one ``.npy`` member, checked against the
    member's size before anything is allocated.

    A header may claim any shape: numpy would allocate that much before finding the data short
    (a few bytes claiming terabytes end in MemoryError). Object arrays are refused unread
    (reading them would unpickle).
    """
    with z.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
        except ValueError:
            raise _unreadable(name, f"member {show(info.filename)} is not a .npy array") from None
        read_header = _NPY_HEADERS.get(version)
        if read_header is None:
            raise _unreadable(name, f"{key}: .npy format version {version[0]}.{version[1]} is not supported")
        shape, fortran, dtype = read_header(f)
        header_len = f.tell()
    if dtype.hasobject:
        raise _unreadable(name, f"{key} holds Python objects (dtype {dtype}), which are never unpickled")
    need = math.prod(shape) * dtype.itemsize
    have = info.file_size - header_len
    if need != have:
        raise _unreadable(name, f"{key}: holds {have} bytes, but its header says shape {shape} of {dtype}, {need} bytes")
    return shape, fortran, dtype, header_len


def member_array(z: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, name: str) -> np.ndarray:
    """One ``.npy`` member, read after :func:`member_header` has checked it."""
    member_header(z, info, key, name)
    with z.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def read_npz(p: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, by name; any flaw is one :class:`InputError` line."""
    name = p.name
    try:
        with open(p, "rb") as fh:
            magic = fh.read(len(np.lib.format.MAGIC_PREFIX))
        if magic == np.lib.format.MAGIC_PREFIX:
            raise InputError(f"{name}: holds a single .npy array, not an .npz archive of named arrays")
        with zipfile.ZipFile(p) as z:
            members: dict[str, zipfile.ZipInfo] = {}
            for info in z.infolist():
                if info.is_dir():
                    continue
                if not info.filename.endswith(".npy"):
                    raise _unreadable(name, f"member {show(info.filename)} is not a .npy array")
                key = info.filename[: -len(".npy")]
                if key in members:
                    raise InputError(f"{name}: holds {show(key)} twice")
                members[key] = info
            check_keys(sorted(members), name)
            return {key: member_array(z, info, key, name) for key, info in members.items()}
    except InputError:
        raise
    except MemoryError:
        raise _unreadable(name, "too large to load into memory") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, KeyError,
            NotImplementedError, RuntimeError) as e:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression method
        raise _unreadable(name, str(e).splitlines()[0] if str(e) else e.__class__.__name__) from None


def check_keys(keys: list[str], name: str) -> None:
    """A file holds ``topk_ids`` or ``counts`` (not both) and only the keys of its layout."""
    has_ids, has_counts = "topk_ids" in keys, "counts" in keys
    if has_ids and has_counts:
        raise InputError(f"{name}: holds both topk_ids and counts; a trace is one or the other")
    if not has_ids and not has_counts:
        found = ", ".join(one_line(k, 40) for k in keys[:10]) + (", ..." if len(keys) > 10 else "")
        raise InputError(
            f"{name}: missing topk_ids (a per-token trace) or counts (a counts-only trace); "
            f"found {found or 'no arrays'}"
        )
    allowed = TOKEN_KEYS if has_ids else COUNTS_KEYS
    unknown = [k for k in keys if k not in allowed]
    if unknown:
        shown = ", ".join(one_line(k, 40) for k in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise InputError(f"{name}: unknown keys {shown} (allowed: {', '.join(allowed)})")
