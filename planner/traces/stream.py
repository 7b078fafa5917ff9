"""Per-token ``.npz`` traces larger than memory: read layer by layer, keep a sample of steps.

A per-token trace costs ``L · k · 4`` bytes per token in memory as int32 (1.9 kB for
DeepSeek-V3: a 10-million-token trace is 19 GB), and validating it needs temporaries of the
same order. :func:`stream_npz` never holds the whole ``topk_ids``: it decompresses the
``topk_ids`` member sequentially (the ``.npy`` layout is C order [L, T, k], so the stream is
layer 0's tokens, then layer 1's …) in chunks of :data:`CHUNK_TOKENS` tokens and, per chunk,

1. checks the rules :class:`~planner.traces.trace.Trace` checks (ids in ``[0, E)``, no repeated
   expert in a token's top-k) with the same messages;
2. adds the chunk to the per-step counts ``[S, L, E]`` of **every** step (exact; this is what
   balancing needs);
3. keeps the tokens of a deterministic sample of whole steps — evenly spaced over the trace,
   as many as fit in ``max_bytes`` (:func:`kept_steps`) — for what needs tokens (co-activation,
   traffic, cross-layer statistics, held-out scoring).

``step``, ``source_rank`` (``[T]``, about 1% of the ids' size) are read whole in their stored
dtype; ``topk_weights``, when present, is streamed alongside the ids and sampled the same way.

The result is a :class:`StreamedTrace`: a :class:`Trace` of the sampled steps that also carries
the exact counts of all steps (``recorded_counts`` [S, L, E] with their step ids). The planner
balances on the exact counts of all planning steps and scores traffic on the sampled ones, and
says so in the plan's notes (:data:`NOTE`).

Peak memory: the sample (``max_bytes``), the counts (``S·L·E·8`` bytes), ``step`` and
``source_rank`` as stored, plus one chunk (:data:`CHUNK_TOKENS` · k values and its
temporaries) — independent of the trace's length otherwise.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from planner.errors import InputError
from planner.specs.base import show
from planner.traces.npy import check_keys, member_array, member_header
from planner.traces.trace import NULL_EXPERT, Trace, _check_num_experts

#: Tokens decompressed and checked at a time (one layer's slice of them).
CHUNK_TOKENS = 1 << 18
#: Environment variable that sets the memory (GB) a per-token trace may take before it is streamed.
MEMORY_ENV = "MOE_PLANNER_TRACE_MEMORY_GB"
#: Default: traces whose in-memory form (int32 ids, ×3 for validation temporaries) exceeds this
#: many bytes are streamed.
DEFAULT_MAX_BYTES = 2 * 2**30
#: Largest per-step count array [S, L, E] (int64) a streamed read may allocate.
COUNTS_MAX_BYTES = 4 * 2**30
#: Bytes per id in memory, with the temporaries Trace's validation allocates (sort, masks).
BYTES_PER_ID = 4 * 3

NOTE = (
    "streamed trace ({total} tokens, {steps} steps, larger than the {budget:.2f} GB trace memory budget): "
    "balancing used the exact per-step counts of every planning step; token-level figures (traffic, "
    "co-activation, held-out scoring) come from {kept} of the {steps} steps, evenly spaced"
)


def max_trace_bytes() -> int:
    """Memory a per-token trace may take before it is streamed: ``$MOE_PLANNER_TRACE_MEMORY_GB``
    (GB) or :data:`DEFAULT_MAX_BYTES`."""
    raw = os.environ.get(MEMORY_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_BYTES
    try:
        gb = float(raw)
    except ValueError:
        raise InputError(f"{MEMORY_ENV} must be a number of GB (got {show(raw)})") from None
    if not gb > 0 or not math.isfinite(gb):
        raise InputError(f"{MEMORY_ENV} must be > 0 GB (got {show(raw)})")
    return int(gb * 1e9)


class StreamedTrace(Trace):
    """A :class:`Trace` of a sample of whole steps plus the exact counts of all steps.

    ``recorded_steps`` int64 [S]: every step id of the file; ``recorded_counts`` int64 [S, L, E]:
    tokens per expert per step and layer, over all tokens; ``total_tokens``: tokens in the
    file; ``budget_bytes``: the memory budget that made it stream.
    """

    recorded_steps: np.ndarray
    recorded_counts: np.ndarray
    total_tokens: int
    budget_bytes: int

    def note(self) -> str:
        return NOTE.format(
            total=self.total_tokens, steps=self.recorded_steps.size, budget=self.budget_bytes / 1e9, kept=self.num_steps,
        )


def npz_ids_bytes(path: str | Path) -> int | None:
    """In-memory bytes (:data:`BYTES_PER_ID` per id) of the ``topk_ids`` of an ``.npz`` trace,
    from its header alone; None when the file is not a readable per-token ``.npz``."""
    try:
        with zipfile.ZipFile(path) as z:
            shape, _f, dtype, _h = member_header(z, z.getinfo("topk_ids.npy"), "topk_ids", Path(path).name)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, InputError, EOFError,
            RuntimeError, NotImplementedError):
        return None  # not streamable as it stands: the whole-file loader reports what is wrong
    if len(shape) != 3 or dtype.kind not in "iu":
        return None
    return math.prod(shape) * BYTES_PER_ID


def kept_steps(step_sizes: np.ndarray, max_tokens: int) -> np.ndarray:
    """Positions of the steps kept: evenly spaced over all S steps, as many as fit in
    ``max_tokens`` tokens (at least two when there are two, so that the trace can still be
    split into planning and held-out steps; at least one)."""
    S = step_sizes.size
    mean = float(step_sizes.mean())
    n = int(min(S, max(2 if S >= 2 else 1, max_tokens // max(1.0, mean))))
    while n > 2 and step_sizes[np.unique(np.linspace(0, S - 1, n).round().astype(np.int64))].sum() > max_tokens:
        n -= 1
    return np.unique(np.linspace(0, S - 1, n).round().astype(np.int64))


def _read_small(z: zipfile.ZipFile, key: str, name: str) -> np.ndarray | None:
    """A [T]-sized or scalar member, read whole (its header checked against its size first)."""
    try:
        info = z.getinfo(f"{key}.npy")
    except KeyError:
        return None
    return member_array(z, info, key, name)


def _check_chunk(chunk: np.ndarray, num_experts: int, layer: int, first_token: int, name: str) -> None:
    bad = chunk >= num_experts
    if chunk.dtype.kind == "i":
        bad |= chunk < NULL_EXPERT
    if bad.any():
        value = int(chunk[bad][0])
        raise InputError(
            f"{name}: topk_ids values must be in [-1, {num_experts}) (-1 = no expert; found {value} at layer {layer})"
        )
    if chunk.shape[1] > 1:
        srt = np.sort(chunk, axis=-1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)  # -1 (no expert) may repeat
        if dup.any():
            t, j = (int(x[0]) for x in np.nonzero(dup))
            raise InputError(
                f"{name}: topk_ids must not repeat an expert in one token's top-k "
                f"(expert {int(srt[t, j])} twice for token {first_token + t} at layer {layer})"
            )


def _kept(arr: np.ndarray | None, T: int, keep_T: np.ndarray, key: str, name: str) -> np.ndarray | None:
    """A per-token array ([T]) restricted to the kept tokens (None stays None)."""
    if arr is None:
        return None
    if arr.shape != (T,):
        raise InputError(f"{name}: {key} must have shape [tokens] = ({T},), got {arr.shape}")
    return arr[keep_T]


def stream_npz(
    path: str | Path,
    *,
    num_experts: int | None = None,
    model: str | None = None,
    tokens_per_step: int | None = None,
    max_bytes: int | None = None,
) -> StreamedTrace:
    """Read a per-token ``.npz`` trace chunk by chunk (module docstring): exact counts of every
    step, tokens of a sample of steps fitting in ``max_bytes`` (default :func:`max_trace_bytes`)."""
    try:
        return _stream(Path(path), num_experts, model, tokens_per_step, max_bytes)
    except InputError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error,
            RuntimeError, NotImplementedError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{Path(path).name}: not a readable .npz file ({msg[:120]})") from None


def _stream(
    p: Path, num_experts: int | None, model: str | None, tokens_per_step: int | None, max_bytes: int | None,
) -> StreamedTrace:
    name = p.name
    budget = max_trace_bytes() if max_bytes is None else int(max_bytes)
    try:
        z = zipfile.ZipFile(p)
    except (OSError, zipfile.BadZipFile) as e:
        raise InputError(f"{name}: not a readable .npz file ({e})") from None
    with z:
        check_keys(sorted(n[: -len(".npy")] for n in z.namelist() if n.endswith(".npy")), name)
        info = z.getinfo("topk_ids.npy")
        shape, fortran, dtype, hlen = member_header(z, info, "topk_ids", name)
        if len(shape) != 3:
            raise InputError(f"{name}: topk_ids must have shape [layers, tokens, top_k], got {shape}")
        if dtype.kind not in "iu":
            raise InputError(f"{name}: topk_ids must hold integers, got dtype {dtype}")
        if fortran:
            raise InputError(f"{name}: topk_ids is stored in Fortran order; stream needs C order (np.savez of a C array)")
        L, T, k = (int(x) for x in shape)
        if L == 0 or T == 0 or k == 0:
            raise InputError(f"{name}: topk_ids must have at least one layer, token and choice, got shape {shape}")
        ne = _read_small(z, "num_experts", name)
        if ne is not None and (ne.ndim != 0 or ne.dtype.kind not in "iu"):
            raise InputError(f"{name}: num_experts must be an integer scalar")
        E = int(ne) if ne is not None else num_experts
        if E is None:
            raise InputError(f"{name}: a streamed trace needs num_experts in the file or a model")
        _check_num_experts(E, name)
        if k > E:
            raise InputError(f"{name}: top_k ({k}) must be <= num_experts ({E})")
        if model is None:
            mn = _read_small(z, "model", name)
            if mn is not None and (mn.ndim != 0 or mn.dtype.kind != "U"):
                raise InputError(f"{name}: model must be a string, got dtype {mn.dtype}")
            model = str(mn) if mn is not None else None
        step = _read_small(z, "step", name)
        if step is None:
            tps = tokens_per_step
            step = np.zeros(T, np.int64) if tps is None else np.arange(T, dtype=np.int64) // int(tps)
        if step.shape != (T,) or step.dtype.kind not in "iu":
            raise InputError(f"{name}: step must be integers of shape [tokens] = ({T},), got {step.dtype} {step.shape}")
        if T > 1 and (np.diff(step.astype(np.int64)) < 0).any():
            raise InputError(f"{name}: step must be non-decreasing")
        labels, starts, sizes = np.unique(step, return_index=True, return_counts=True)
        S = labels.size
        keep_pos = kept_steps(sizes, max(1, budget // (L * k * BYTES_PER_ID)))
        keep_T = np.zeros(T, dtype=bool)
        for s in keep_pos:
            keep_T[starts[s]: starts[s] + sizes[s]] = True
        n_keep = int(keep_T.sum())
        step_pos = np.repeat(np.arange(S, dtype=np.int64), sizes)  # position of each token's step
        rank = _read_small(z, "source_rank", name)
        if rank is not None and rank.shape != (T,):
            raise InputError(f"{name}: source_rank must have shape [tokens] = ({T},), got {rank.shape}")
        seqs = {key: _read_small(z, key, name) for key in ("seq_id", "pos")}
        winfo = z.getinfo("topk_weights.npy") if "topk_weights.npy" in z.namelist() else None

        if S * L * E * 8 > COUNTS_MAX_BYTES:
            raise InputError(
                f"{name}: per-step counts of {S} steps × {L} layers × {E} experts need {S * L * E * 8 / 1e9:.1f} GB "
                f"(at most {COUNTS_MAX_BYTES / 1e9:.1f}); use larger steps (a step array or `tokens_per_step`)",
                mentions=("tokens_per_step",),
            )
        counts = np.zeros((S, L, E), dtype=np.int64)
        ids_keep = np.empty((L, n_keep, k), dtype=np.int32)
        w_keep = None
        wf = None
        if winfo is not None:
            wshape, _wfo, wdtype, whlen = member_header(z, winfo, "topk_weights", name)
            if tuple(wshape) != (L, T, k) or wdtype.kind != "f":
                raise InputError(f"{name}: topk_weights must be floats of the shape of topk_ids {shape}")
            w_keep = np.empty((L, n_keep, k), dtype=wdtype)
            wf = z.open(winfo)
            wf.read(whlen)
        with z.open(info) as f:
            f.read(hlen)
            for layer in range(L):
                out = 0
                for t0 in range(0, T, CHUNK_TOKENS):
                    n = min(CHUNK_TOKENS, T - t0)
                    buf = f.read(n * k * dtype.itemsize)
                    chunk = np.frombuffer(buf, dtype=dtype).reshape(n, k)
                    _check_chunk(chunk, E, layer, t0, name)
                    ids64 = chunk.astype(np.int64)
                    flat = (step_pos[t0: t0 + n, None] * E + ids64)[ids64 >= 0]  # -1: no expert
                    counts[:, layer, :] += np.bincount(flat, minlength=S * E).reshape(S, E)
                    m = keep_T[t0: t0 + n]
                    got = int(m.sum())
                    ids_keep[layer, out: out + got] = chunk[m]
                    if wf is not None:
                        wchunk = np.frombuffer(wf.read(n * k * w_keep.itemsize), dtype=w_keep.dtype).reshape(n, k)
                        w_keep[layer, out: out + got] = wchunk[m]
                    out += got
        if wf is not None:
            wf.close()
    tr = StreamedTrace(
        ids_keep, E, topk_weights=w_keep, step=step[keep_T], source_rank=None if rank is None else rank[keep_T],
        model=model, source=name, **{key: _kept(a, T, keep_T, key, name) for key, a in seqs.items()},
    )
    tr.recorded_steps = labels.astype(np.int64)
    tr.recorded_counts = counts
    tr.total_tokens = T
    tr.budget_bytes = budget
    return tr
