"""Offline bounds on an expert cache: Belady's optimum and plain LRU over one access sequence.

The planner reports how far its cache plan is from the best any cache of the same size could do
(the slots, not the policy, are what the plan chooses); :mod:`planner.cachesim` replays the
policies themselves. An access sequence is one integer key per (step, layer, expert) access
(:func:`access_keys`).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict

import numpy as np

from planner.errors import InputError


def belady_misses(keys: np.ndarray, capacity: int, *, warm: bool = False, bypass: bool = True) -> int:
    """Misses of Belady's offline optimum on the access sequence ``keys`` (1-D ints) with
    ``capacity`` slots: evict the key used furthest in the future. ``bypass``: a missed key whose
    next use is later than every cached key's is not admitted (it goes through the staging
    buffer). ``warm``: loads made while the cache still had free slots are not charged (any
    policy may start with a full cache: OPT_warm >= OPT_cold − K).

    With a shared pool of K slots over all layers (accesses ordered step, layer, expert) the
    result is a lower bound on the demand copies of any cache of K slots.
    """
    keys = np.asarray(keys, dtype=np.int64).ravel()
    if capacity < 0:
        raise InputError(f"capacity must be >= 0 slots (got {capacity})")
    n = keys.size
    if capacity == 0:
        return int(n)
    nxt = np.full(n, n, dtype=np.int64)
    last: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        k = int(keys[i])
        nxt[i] = last.get(k, n)
        last[k] = i
    cached: dict[int, int] = {}  # key -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, key), lazily invalidated
    misses = 0
    for i in range(n):
        k = int(keys[i])
        nu = int(nxt[i])
        if k in cached:
            cached[k] = nu
            heapq.heappush(heap, (-nu, k))
            continue
        if len(cached) < capacity:
            if not warm:
                misses += 1
            cached[k] = nu
            heapq.heappush(heap, (-nu, k))
            continue
        misses += 1
        while heap and cached.get(heap[0][1]) != -heap[0][0]:
            heapq.heappop(heap)
        far = -heap[0][0]
        if bypass and nu >= far:
            continue
        _, victim = heapq.heappop(heap)
        del cached[victim]
        cached[k] = nu
        heapq.heappush(heap, (-nu, k))
    return misses


def access_keys(counts_SLE: np.ndarray) -> np.ndarray:
    """Accesses (step, layer, expert) in execution order as keys ``layer · E + expert``."""
    S, L, E = counts_SLE.shape
    s, layer, e = np.nonzero(counts_SLE)  # row-major: step, then layer, then expert
    return layer.astype(np.int64) * E + e


def lru_misses(keys: np.ndarray, capacity: int) -> int:
    """Misses of one LRU cache of ``capacity`` slots on the access sequence ``keys`` (a reference
    for tests and for per-layer LRU without pinning)."""
    od: OrderedDict[int, None] = OrderedDict()
    misses = 0
    for k in np.asarray(keys, dtype=np.int64).ravel().tolist():
        if k in od:
            od.move_to_end(k)
            continue
        misses += 1
        if capacity <= 0:
            continue
        od[k] = None
        if len(od) > capacity:
            od.popitem(last=False)
    return misses
