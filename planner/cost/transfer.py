"""Host↔device copy time over PCIe, from a profile's measured bandwidth curves.

Model (alpha-beta per copy)::

    t(n) = L + n / B(n)          (n > 0 bytes; t(0) = 0: no copy is issued)

with L = ``pcie.copy_latency_us`` and B(n) the *transfer* bandwidth once the fixed cost is
paid. A profile's curve holds, per copy size n_i, the bandwidth one copy of that size achieved as
measured, g_i = n_i / t_i, its fixed cost included (docs/facts.md §2: 36 GB/s at 1 MB, 52 GB/s at
8 MB, 54-55 GB/s from 64 MB; about 7 µs per copy). So each point gives

    B_i = n_i / (n_i / g_i − L)

which makes t(n_i) equal the measured time exactly; between points B is interpolated linearly in
log n, and held constant beyond the first and last points. Adding L on top of the raw curve
instead would count the fixed cost twice (+24% at 1 MB on H100; +0.6% at 64 MB). The schema
checks that every measured copy takes longer than L.

Example (h100-sxm): 64 MiB pinned → 1.228 ms, the measured 54.64 GB/s; 64e6 bytes → 1.172 ms
(64e6 / 54.6 GB/s + 7 µs = 1.179 ms).

Overlap with compute (a copy on a side stream while kernels run, e.g. prefetching the next
layer's experts)::

    t = max(copy, compute) + (1 − ov) · min(copy, compute)

with ov = ``pcie.copy_compute_overlap`` of the profile (docs/facts.md §2: a 352 MB copy during bf16
GEMMs on H100 took 7.67 ms against 6.93 ideal and 13.43 serial, ov = 0.89). Several copies in a
row pay the fixed cost each: ``h2d_ms`` of each size, summed.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from planner.errors import InputError
from planner.specs.hardware import CurvePoint, HardwareProfile


def _copy_ms(points: list[CurvePoint], latency_us: float, nbytes: ArrayLike) -> np.ndarray:
    n = np.asarray(nbytes, dtype=np.float64)
    if n.size and not np.all(np.isfinite(n)):
        raise InputError("nbytes: copy sizes must be finite numbers")
    if n.size and n.min() < 0:
        raise InputError(f"nbytes: copy sizes must be >= 0 bytes (got {n.min():g})")
    size = np.array([p.bytes for p in points], dtype=np.float64)
    measured_s = size / (np.array([p.gbps for p in points], dtype=np.float64) * 1e9)
    latency_s = latency_us * 1e-6
    transfer_bw = size / (measured_s - latency_s)  # bytes/s once the fixed cost is paid
    out = np.zeros_like(n)
    pos = n > 0
    bw = np.interp(np.log(n[pos]), np.log(size), transfer_bw)  # clamps at both ends
    out[pos] = (latency_s + n[pos] / bw) * 1e3
    return out


def h2d_ms(hw: HardwareProfile, nbytes: ArrayLike, pinned: bool = True) -> np.ndarray:
    """Time (ms) of one host-to-device copy of ``nbytes`` bytes each (vectorized; 0 bytes → 0)."""
    if pinned:
        curve = hw.pcie.h2d_pinned
    else:
        if hw.pcie.h2d_pageable is None:
            raise InputError(
                f"hardware {hw.name}: pcie.h2d_pageable is not in the profile; use pinned memory "
                "or add a pageable curve"
            )
        curve = hw.pcie.h2d_pageable
    return _copy_ms(curve, hw.pcie.copy_latency_us, nbytes)


def d2h_ms(hw: HardwareProfile, nbytes: ArrayLike) -> np.ndarray:
    """Time (ms) of one device-to-host copy into pinned memory of ``nbytes`` bytes each."""
    return _copy_ms(hw.pcie.d2h_pinned, hw.pcie.copy_latency_us, nbytes)


def overlapped_ms(copy_ms: ArrayLike, compute_ms: ArrayLike, overlap: float) -> np.ndarray:
    """Wall time of a copy and compute running side by side (module docstring), elementwise."""
    if not 0.0 <= overlap <= 1.0:
        raise InputError(f"overlap must be in [0, 1] (got {overlap})")
    c = np.asarray(copy_ms, dtype=np.float64)
    k = np.asarray(compute_ms, dtype=np.float64)
    if (c.size and c.min() < 0) or (k.size and k.min() < 0):
        raise InputError("copy_ms and compute_ms must be >= 0")
    return np.maximum(c, k) + (1.0 - overlap) * np.minimum(c, k)


def h2d_during_compute_ms(hw: HardwareProfile, nbytes: ArrayLike, compute_ms: ArrayLike, pinned: bool = True) -> np.ndarray:
    """Wall time of a host-to-device copy of ``nbytes`` issued beside ``compute_ms`` of kernels."""
    return overlapped_ms(h2d_ms(hw, nbytes, pinned), compute_ms, hw.pcie.copy_compute_overlap)
