"""Where a plan came from: the package version and one hash of the inputs it was made from.

Every plan (placement and offload) records the same :class:`~planner.specs.plan.Provenance`:
two runs with the same inputs give the same ``input_hash``, so a plan can be traced to what
made it. The inputs differ by mode (an offload plan is made from its decode-shaped trace, a
placement plan from the trace's ids and steps), so each caller says which arrays it hashes;
:func:`input_hash` is the one way they are hashed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from typing import Any

import numpy as np

from planner.specs.plan import Provenance


def version() -> str:
    """The installed package's version (``0+unknown`` in a source tree without install)."""
    try:
        return _pkg_version("moe-planner")
    except PackageNotFoundError:
        return "0+unknown"


def input_hash(parts: dict[str, Any], arrays: Sequence[np.ndarray], *, shapes: bool = True) -> str:
    """sha256 of ``parts`` as sorted-key JSON, then of each array as int64 bytes (each preceded by
    its shape when ``shapes``). Offload plans hash their one array without its shape (their
    hashes were always made so; keeping it keeps the hashes of existing plans)."""
    h = hashlib.sha256()
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    for arr in arrays:
        a = np.ascontiguousarray(arr)
        if shapes:
            h.update(str(a.shape).encode())
        h.update(a.astype(np.int64).tobytes())
    return h.hexdigest()


def array_hash(arr: np.ndarray) -> str:
    """sha256 of an array's raw bytes (a previous placement, as a plan's inputs record it)."""
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def make_provenance(seed: int, trace_label: str, digest: str) -> Provenance:
    """The plan's provenance: this version, the seed, the input hash, now (UTC, seconds)."""
    return Provenance(
        version=version(),
        seed=seed,
        input_hash=digest,
        created=_dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        trace=trace_label,
    )
